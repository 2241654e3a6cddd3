"""Use cases, one module per resource; each takes a Context (see app.services.context)."""
