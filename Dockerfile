# The app as a container: `docker build -t ovdet . && docker run -p 7860:7860 -v ovdet-data:/data ovdet`
FROM python:3.11-slim

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
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app:app /data
USER 1000

VOLUME ["/data"]
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
