"""The one module gunicorn loads: `gunicorn -c gunicorn.conf.py wsgi:app`."""
from fonana_realtime.app import create_app

app = create_app()
