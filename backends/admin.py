"""Operator views for backends (credentials write-only, deletion refused while in use) and sim state."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as confirm_delete_selected
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from backends.dependents import backend_dependencies, dependent_counts
from backends.models import Backend, Orphan, SimFault, SimInstance, SimJob, SimVolume
from backends.orphans import terminate_orphan
from backends.services import (
    create_backend,
    delete_backend,
    drain_backend,
    resume_backend,
    terminate_backend_instances,
    update_backend,
)
from core.admin import ReadOnlyAdmin, ServiceForm, ServiceFormAdmin, run_for_each
from core.errors import ServiceError


def in_use_text(dependencies: dict) -> str:
    parts = [f"{kind} {', '.join(names)}" for kind, names in dependencies.items() if names]
    return " and ".join(parts)


def refusal_text(backend: Backend, err: ServiceError) -> str:
    """The admin's version of the API's 409: what keeps the backend, by name."""
    in_use = in_use_text({k: err.extra.get(k, []) for k in ("instances", "volumes")})
    return f"Cannot delete backend '{backend}': in use by {in_use}." if in_use else f"{backend}: {err.detail}"


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value, like ``PasswordInput(render_value=False)``."""

    def get_context(self, name, value, attrs):
        return super().get_context(name, None, attrs)


class BackendForm(ServiceForm):
    """Creates or updates the backend through the service; the stored credentials are never shown."""

    credentials = forms.JSONField(
        required=False,
        widget=WriteOnlyTextarea(attrs={"rows": 4, "autocomplete": "off"}),
        help_text="Write-only JSON object. Leave empty to keep the stored credentials; {} removes them.",
    )

    class Meta:
        model = Backend
        fields = ("project", "name", "type", "config")

    def error_field(self, err):
        return "config" if err.code == "invalid_config" else super().error_field(err)

    def call_service(self, *, user=None):
        data, actor = self.cleaned_data, getattr(user, "username", "")
        if self.instance.pk is None:
            return create_backend(project=data["project"], name=data["name"], type=data["type"],
                                  config=data.get("config"), credentials=data.get("credentials"), actor=actor)
        config = data.get("config") if "config" in self.changed_data else None
        return update_backend(backend=self.instance, config=config, credentials=data.get("credentials"), actor=actor)


@admin.register(Backend)
class BackendAdmin(ServiceFormAdmin):
    """Backends are written only by the backend services.

    Credentials are write-only; deletion (single or bulk) goes through ``delete_backend`` and is
    refused, deleting nothing, while an active instance or a volume that is not deleted uses a backend.
    """

    form = BackendForm
    list_display = ("name", "project", "type", "status", "status_message", "active_instances", "live_volumes")
    list_filter = ("status", "type", "project")
    list_select_related = ("project",)
    search_fields = ("name",)
    actions = ("delete_selected", "drain", "resume", "terminate_all_instances")
    DETAIL_FIELDS = ("status", "status_message", "credentials_set", "dependencies", "created_at", "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**dependent_counts())

    def get_fields(self, request, obj=None):
        base = ("project", "name", "type", "config", "credentials")
        return base + self.DETAIL_FIELDS if obj else base

    def get_readonly_fields(self, request, obj=None):
        return ("project", "name", "type") + self.DETAIL_FIELDS if obj else ()

    @admin.display(description="active instances", ordering="n_instances")
    def active_instances(self, obj):
        return obj.n_instances

    @admin.display(description="volumes", ordering="n_volumes")
    def live_volumes(self, obj):
        return obj.n_volumes

    @admin.display(description="credentials stored", boolean=True)
    def credentials_set(self, obj):
        return obj.has_credentials

    @admin.display(description="in use by")
    def dependencies(self, obj):
        return in_use_text(backend_dependencies(obj)) or "nothing: the backend can be deleted"

    def get_deleted_objects(self, objs, request):
        # The sim rows are the provider side of a backend and go with it; their admin being
        # read-only must not block the deletion.
        deleted, model_count, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, model_count, set(), protected

    def delete_model(self, request, obj):
        delete_backend(backend=obj, actor=request.user.username)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ServiceError as err:  # raised by delete_model; the view's transaction rolled back
            self.message_user(request, refusal_text(self.get_object(request, unquote(object_id)), err), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:backends_backend_change", args=[object_id]))

    @admin.action(permissions=["delete"], description="Delete selected backends")
    def delete_selected(self, request, queryset):
        """Like Django's bulk delete (confirmation page, all or nothing), but through ``delete_backend``."""
        if not request.POST.get("post"):
            return confirm_delete_selected(self, request, queryset)
        backends, refusals = list(queryset), []
        with transaction.atomic():
            self.log_deletions(request, queryset)
            for backend in backends:
                try:
                    delete_backend(backend=backend, actor=request.user.username)
                except ServiceError as err:
                    refusals.append(refusal_text(backend, err))
            transaction.set_rollback(bool(refusals))
        for text in refusals:
            self.message_user(request, text, messages.ERROR)
        if refusals:
            self.message_user(request, "Nothing was deleted.", messages.WARNING)
        else:
            self.message_user(request, f"Deleted {', '.join(map(str, backends))}.", messages.SUCCESS)

    @admin.action(permissions=["change"], description="Drain selected backends (nothing new placed on them)")
    def drain(self, request, queryset):
        run_for_each(self, request, queryset, lambda b, actor: drain_backend(backend=b, actor=actor).status)

    @admin.action(permissions=["change"], description="Resume selected backends")
    def resume(self, request, queryset):
        run_for_each(self, request, queryset, lambda b, actor: resume_backend(backend=b, actor=actor).status)

    def get_urls(self):
        # The change page's Drain/Resume buttons (change_form.html) post here.
        return [
            path("<path:object_id>/drain/", self.admin_site.admin_view(self._status_view(drain_backend)),
                 name="backends_backend_drain"),
            path("<path:object_id>/resume/", self.admin_site.admin_view(self._status_view(resume_backend)),
                 name="backends_backend_resume"),
            *super().get_urls(),
        ]

    def _status_view(self, service):
        @require_POST
        def view(request, object_id):
            if not self.has_change_permission(request):
                raise PermissionDenied
            backend = get_object_or_404(Backend, pk=unquote(object_id))
            backend = service(backend=backend, actor=request.user.username)
            self.message_user(request, f"{backend}: {backend.status}", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:backends_backend_change", args=[backend.pk]))

        return view

    @admin.action(permissions=["change"], description="Drain and terminate all instances of selected backends")
    def terminate_all_instances(self, request, queryset):
        for backend in queryset:
            names = terminate_backend_instances(backend=backend, actor=request.user.username)
            text = f"terminating {', '.join(names)}" if names else "no active instance"
            self.message_user(request, f"{backend}: {text}", messages.SUCCESS)


class SimStateAdmin(ReadOnlyAdmin):
    """The simulated provider's own rows, read-only: only the sim driver writes them."""

    list_filter = ("state", "backend")
    list_select_related = ("backend",)


@admin.register(SimInstance)
class SimInstanceAdmin(SimStateAdmin):
    list_display = ("instance_id", "name", "backend", "region", "availability_zone", "instance_type", "state")
    search_fields = ("instance_id", "name")


@admin.register(SimVolume)
class SimVolumeAdmin(SimStateAdmin):
    list_display = ("volume_id", "name", "backend", "region", "state", "attached_instance_id", "detach_requested",
                    "detach_forced")
    search_fields = ("volume_id", "name")


@admin.register(SimJob)
class SimJobAdmin(SimStateAdmin):
    list_display = ("workload_id", "job_name", "backend", "instance_id", "state", "exit_status", "message")
    search_fields = ("workload_id", "job_name")


@admin.register(SimFault)
class SimFaultAdmin(SimStateAdmin):
    list_display = ("kind", "params", "backend", "created_at")
    list_filter = ("kind", "backend")
    search_fields = ("kind",)


@admin.register(Orphan)
class OrphanAdmin(ReadOnlyAdmin):
    """Provider resources tagged as ours that no row owns, as ``backends.find_orphans`` recorded them.

    Read-only; "terminate now" terminates a found orphan at once, whatever the backend's grace and
    ``terminate_orphans`` say (refused if a row owns it by now).
    """

    list_display = ("provider_id", "kind", "name", "backend", "region", "availability_zone", "status",
                    "first_seen_at", "last_seen_at", "terminated_at", "status_message")
    list_filter = ("status", "kind", "backend__project", "backend")
    list_select_related = ("backend",)
    search_fields = ("provider_id", "name", "backend__name")
    date_hierarchy = "first_seen_at"
    actions = ("terminate_now",)

    @admin.action(permissions=["operate"], description="Terminate now (at the provider)")
    def terminate_now(self, request, queryset):
        run_for_each(self, request, queryset.select_related("backend"),
                     lambda orphan, actor: terminate_orphan(orphan=orphan, actor=actor))
