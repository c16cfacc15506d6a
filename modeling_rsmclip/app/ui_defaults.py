"""Queue settings shared by the page and the command line (importable without Gradio)."""

# Requests computed at once. Each one runs the model on the CPU with torch's own threads, so more than a
# couple per machine only makes every request slower; more wait in the queue, in order.
DEFAULT_CONCURRENCY = 2
# Requests that may wait; the next one is told the queue is full (in the page) instead of waiting for minutes.
DEFAULT_QUEUE_SIZE = 64
