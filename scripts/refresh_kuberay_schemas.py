"""Vendor the KubeRay CRDs' ``openAPIV3Schema`` for the kinds ``cluster_configs/kuberay/`` uses.

Usage (needs network access to GitHub)::

    python scripts/refresh_kuberay_schemas.py --version v1.6.0

downloads ``ray-operator/config/crd/bases/ray.io_<plural>.yaml`` of that KubeRay tag for
RayCluster, RayJob and RayCronJob, takes the ``v1`` version's ``openAPIV3Schema`` of each, and
writes ``cluster_configs/schemas/kuberay-<version>/<plural>.json`` (the schema, as JSON) plus
``SOURCE.json`` (the KubeRay version, and per kind the URL and SHA-256 of the downloaded CRD).
The manifests are validated against these files with ``jsonschema``
(``tests/cluster_configs/crd_schema.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_URL = "https://raw.githubusercontent.com/ray-project/kuberay"
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
API_VERSION = "v1"


def crd_url(base_url: str, version: str, plural: str) -> str:
    """URL of the CRD of ``plural`` at KubeRay tag ``version``."""
    return f"{base_url}/{version}/ray-operator/config/crd/bases/ray.io_{plural}.yaml"


def extract_schema(crd_text: str, kind: str, source: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the :data:`API_VERSION` version of a CRD.

    Args:
        crd_text: The CustomResourceDefinition YAML.
        kind: The kind it must define (``RayCluster``...).
        source: Named in error messages.

    Raises:
        ValueError: Not a CRD of ``kind``, or no ``v1`` version with a schema.
    """
    crd = yaml.safe_load(crd_text)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{source}: not a CustomResourceDefinition")
    defined = crd["spec"]["names"]["kind"]
    if defined != kind:
        raise ValueError(f"{source}: defines kind {defined!r}, expected {kind!r}")
    for version in crd["spec"]["versions"]:
        if version["name"] == API_VERSION:
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(f"{source}: no {API_VERSION} version in the CRD")


def refresh(version: str, out: Path, base_url: str = BASE_URL) -> Path:
    """Download the CRDs of KubeRay ``version`` and write their schemas under ``out``.

    Args:
        version: KubeRay tag, e.g. ``v1.6.0``.
        out: Folder of vendored schemas (``cluster_configs/schemas``).
        base_url: Where the repository's files are served, by tag (GitHub's raw files; a
            ``file://`` URL of a local tree with the same layout works too).

    Returns:
        The folder written, ``out / f"kuberay-{version}"``.
    """
    target = out / f"kuberay-{version}"
    target.mkdir(parents=True, exist_ok=True)
    sources = {}
    for kind, plural in KINDS.items():
        url = crd_url(base_url, version, plural)
        with urllib.request.urlopen(url, timeout=60) as response:
            raw = response.read()
        schema = extract_schema(raw.decode(), kind, url)
        (target / f"{plural}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        sources[kind] = {"file": f"{plural}.json", "url": url,
                         "sha256": hashlib.sha256(raw).hexdigest()}
    record = {"kuberay_version": version, "api_version": f"ray.io/{API_VERSION}", "kinds": sources}
    (target / "SOURCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--version`` (required), ``--out``, ``--base-url``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", required=True, help="KubeRay tag, e.g. v1.6.0")
    p.add_argument("--out", type=Path, default=REPO / "cluster_configs" / "schemas")
    p.add_argument("--base-url", default=BASE_URL)
    args = p.parse_args(argv)
    print(refresh(args.version, args.out, args.base_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
