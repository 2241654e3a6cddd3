"""Files copied as they are into every export zip: ``predict.py`` (the standalone inference
script; it imports nothing of the service) and the model card's template."""
