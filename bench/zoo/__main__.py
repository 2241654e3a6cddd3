"""`python -m bench.zoo`: build the bundled reference network, source zoo and targets."""

from bench.zoo.build import main

main()
