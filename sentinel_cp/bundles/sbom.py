"""A CycloneDX 1.5 bill of materials for a bundle: the archive and the files inside it.

Built only from stored values (id, version, project, manifest, creation time), so the same
bundle always yields the same document; the serial number is a uuid5 of the bundle id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sentinel_cp.bundles.archive import MEDIA_TYPE

SPEC_VERSION = "1.5"
TOOL_NAME = "sentinel-cp"
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sentinel-cp/bundles")


def serial_number(bundle_id: str) -> str:
    """The BOM's deterministic serial number for a bundle."""
    return f"urn:uuid:{uuid.uuid5(SERIAL_NAMESPACE, bundle_id)}"


def cyclonedx(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """CycloneDX 1.5 JSON for `bundle`: {id, version, project (slug), manifest, created_at}.

    `metadata.component` is the archive (type `file`, SHA-256 = the bundle id); `components`
    has one `file` per configuration file with its SHA-256 and size, in manifest order.
    """
    bundle_id = str(bundle["id"])
    manifest: Mapping[str, Any] = bundle["manifest"]
    bundle_ref = f"bundle:{bundle_id}"
    files = list(manifest.get("files", []))
    components = [
        {
            "type": "file",
            "bom-ref": f"{bundle_ref}/{item['path']}",
            "name": item["path"],
            "hashes": [{"alg": "SHA-256", "content": item["sha256"]}],
            "properties": [{"name": "sentinel:size_bytes", "value": str(item["size"])}],
        }
        for item in files
    ]
    properties = [{"name": "sentinel:project", "value": str(bundle["project"])}]
    if "project_id" in manifest:
        properties.append({"name": "sentinel:project_id", "value": str(manifest["project_id"])})
    if "config_sha256" in manifest:
        properties.append(
            {"name": "sentinel:config_sha256", "value": str(manifest["config_sha256"])}
        )
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial_number(bundle_id),
        "version": 1,
        "metadata": {
            "timestamp": str(bundle["created_at"]),
            "tools": {"components": [{"type": "application", "name": TOOL_NAME}]},
            "component": {
                "type": "file",
                "bom-ref": bundle_ref,
                "name": f"{bundle['project']}-bundle",
                "version": str(bundle["version"]),
                "mime-type": MEDIA_TYPE,
                "hashes": [{"alg": "SHA-256", "content": bundle_id}],
                "properties": properties,
            },
        },
        "components": components,
        "dependencies": [
            {"ref": bundle_ref, "dependsOn": [c["bom-ref"] for c in components]},
        ],
    }
