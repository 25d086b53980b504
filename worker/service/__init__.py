"""The Kafka/Redis streaming service around the pipeline (`dfd-worker run`)."""
