"""`python -m app`: serve the API with uvicorn on P2L_HOST:P2L_PORT."""

import uvicorn

from app.config import Settings


def main() -> None:
    """Start the service with the settings from the environment."""
    settings = Settings()
    uvicorn.run("app.main:app", host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
