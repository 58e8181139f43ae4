"""FastAPI service answering POST /respond from the trained bundles."""
