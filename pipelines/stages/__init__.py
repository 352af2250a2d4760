"""The stages of a run, in order: ingest (bronze), refine (silver), build (gold). Publish is in serving/."""
