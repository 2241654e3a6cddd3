"""The web console: server-rendered pages at / that drive the JSON API from the browser."""
