"""The service's default P2L ranking of the bundled zoo, for benchmarks: the same code and
settings as ``POST /v1/rankings``, without HTTP or a database."""

import numpy as np

from app.config import Settings
from app.p2l.reference import load_reference
from app.p2l.scoring import ScoredSource, ScoringParams, SignatureIndex
from app.p2l.signature import load_signature, signature_of_array
from app.zoo.bundled import BUNDLED_DIR, manifest

# The settings a fresh service starts with.
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


class BundledRanker:
    """The bundled reference network and the bundled sources' signatures, loaded once."""

    def __init__(self) -> None:
        info = manifest()
        self.reference = load_reference(
            info["reference"]["architecture"], BUNDLED_DIR / info["reference"]["weights"], "cpu"
        )
        self.index = SignatureIndex(eps=DEFAULTS["p2l_eps"])
        for entry in info["sources"]:
            self.index.add(entry["name"], load_signature(BUNDLED_DIR / entry["signature"]))
        self.params = ScoringParams(
            DEFAULTS["p2l_lambda"], DEFAULTS["p2l_eps"], DEFAULTS["emd_gamma"]
        )

    def rank(
        self, images: np.ndarray, labels: np.ndarray, class_names: list[str]
    ) -> list[ScoredSource]:
        """Every bundled source for a target (its signature: one pass through the reference)."""
        signature = signature_of_array(self.reference, images, labels, class_names)
        return self.index.rank(signature, "p2l", DEFAULTS["p2l_measure"], self.params)
