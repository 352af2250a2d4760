"""Data quality: statistical checks per run, the gate that stops a bad batch, alerts and the report."""
