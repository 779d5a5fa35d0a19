"""The admin index's dashboard: blocks busy and idle per fleet, runs by status, services by health and
the latest events, above Django's list of apps.

``admin_index`` replaces the admin's index view (``config.urls`` routes ``admin/`` to it first); it
keeps the admin's login check and renders ``ops/admin_index.html``, which extends the admin's own
index. A fixed number of queries (``ops.figures``), whatever the number of rows.
"""

from django.contrib import admin

from ops import figures

LATEST_EVENTS = 20
TEMPLATE = "ops/admin_index.html"


def dashboard_context() -> dict:
    return {
        "fleets": figures.fleet_blocks(),
        "runs_by_status": figures.counts_by_status("runs"),
        "services_by_health": figures.service_health_counts(),
        "events": figures.latest_events(LATEST_EVENTS),
    }


def _index(request, extra_context=None):
    response = admin.site.index(request, extra_context={"dashboard": dashboard_context(), **(extra_context or {})})
    response.template_name = TEMPLATE  # a TemplateResponse: rendered later, with this template
    return response


# The admin's own wrapper: staff login required, never cached, CSRF-protected like admin.site.index.
admin_index = admin.site.admin_view(_index)
