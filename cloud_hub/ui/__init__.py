"""The fleet dashboard served by the hub at ``/ui``.

Plain HTML + our own small JavaScript and SVG chart code (``static/``), shipped
as package data: no CDN, no build step, works on sites without internet.
Pages read the hub's JSON API with the same auth (an API key, kept in an
HttpOnly cookie after login) plus a few server-side chart endpoints in
:mod:`cloud_hub.ui.data`.
"""
