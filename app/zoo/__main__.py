"""`python -m app.zoo build`: train the bundled reference network and demo zoo."""

from app.zoo.build import main

main()
