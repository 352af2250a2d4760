"""What consumers touch: the Feast repo derived from features/, publishing, retrieval, dataset versions."""
