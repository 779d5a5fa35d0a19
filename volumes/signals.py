"""What the volumes app tells the apps above it, which it must not import (``runs`` uses volumes).

``attachments_changed(job_ids=[...])``: the attachments of these jobs moved on (attached, failed,
detached, or a detach error), so the jobs may move on too; ``runs`` listens (``runs.apps``).
"""

from django.dispatch import Signal

attachments_changed = Signal()
