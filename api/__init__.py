"""dfd-api: the HTTP face of the verdicts (API, review page, webhooks), a service of its own.

It reads verdicts from the worker's Redis cache, publishes scan requests to the requests
topic, and follows the results topic in its own consumer groups (the review page's index,
the webhook sender), so the worker's throughput never depends on HTTP clients.
"""
