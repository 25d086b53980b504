"""The streaming worker: fetch, decode, detect faces, classify, aggregate, publish."""
