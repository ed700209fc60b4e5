# Image for the processor and the example file watcher (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY titan_bus ./titan_bus
RUN pip install .

COPY config ./config
COPY examples ./examples

ENV TITAN_CONFIG=/app/config/eventbus.yaml \
    PYTHONPATH=/app

RUN useradd --create-home --uid 10001 titan
USER titan

CMD ["titan-bus", "run", "--app", "examples.handlers:bus"]
