"""The start-up warning for a secret file other users can read.

Group read is fine: Kubernetes mounts a Secret for a non-root uid as 0440 with the
pod's fsGroup as its group, so only the "other" bits (``mode & 0o007``) warn.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("authz")

#: the permission bits that let users outside the file's owner and group at it
OTHER_BITS = 0o007


def warn_if_others_can_read(flag: str, path: str) -> bool:
    """Log a warning when users other than the owner and the file's group can read
    or use ``path`` (the secret behind ``flag``); True when it warned."""
    if not os.stat(path).st_mode & OTHER_BITS:
        return False
    log.warning(
        "%s %s can be read by other users (not its owner or group); chmod o-rwx it "
        "(600, or 640/440 for a group such as a pod's fsGroup)",
        flag,
        path,
    )
    return True
