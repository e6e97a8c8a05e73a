"""The Flask app of bench/sdk_bench.py: GET /ok answers a short body. Served by gunicorn
(`gunicorn -w 1 -k sync flask_app:app`), bare or under `opentelemetry-instrument`."""
from flask import Flask

app = Flask(__name__)


@app.get("/ok")
def ok():
    return "ok\n"
