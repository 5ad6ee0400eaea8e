"""Fail unless end-to-end tests ran through Envoy and none was skipped.

usage: python scripts/check_e2e.py JUNIT_XML
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    ran = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        if ".e2e." not in case.get("classname", "") and "e2e" not in case.get("file", ""):
            continue
        if case.find("skipped") is not None:
            skipped += 1
            print(f"e2e skipped: {case.get('classname')}::{case.get('name')}", file=sys.stderr)
        else:
            ran += 1
    print(f"end-to-end tests through Envoy: {ran} ran, {skipped} skipped")
    if skipped or ran == 0:
        print("FAIL: every end-to-end test must run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
