"""The dashboard's static files (``static/``), served by :mod:`pm.http.ui_routes`."""
