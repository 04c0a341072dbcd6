# The app as a container: `docker build -t ovdet . && docker run -p 7860:7860 -v ovdet-data:/data ovdet`
# CPU-only torch (a much smaller image, no CUDA libraries): `docker build --build-arg TORCH_VARIANT=cpu -t ovdet:cpu .`
FROM python:3.11-slim

ARG TORCH_VARIANT=cuda

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    APP_HOST=0.0.0.0 \
    APP_PORT=7860 \
    HF_HOME=/data/hf-cache \
    OVD_CACHE_DIR=/data/cache

WORKDIR /app
COPY requirements.txt .
# cpu: the same pinned versions from PyTorch's CPU index (their "+cpu" builds win over PyPI's CUDA ones)
RUN if [ "$TORCH_VARIANT" = "cpu" ]; then \
        pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt; \
    else \
        pip install -r requirements.txt; \
    fi

COPY . .
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app:app /data
USER 1000

VOLUME ["/data"]
EXPOSE 7860
# Healthy once the app answers on its port (the first start may download and load a model: a long grace period)
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('APP_PORT', '7860'), timeout=8)"]
# Host and port come from APP_HOST / APP_PORT (docker run -e APP_PORT=8080 -p 8080:8080 …)
CMD ["python", "app.py"]
