"""The pieces every app's admin shares, and the event log's admin.

The admin writes nothing itself: forms save through a service (``ServiceForm``), actions call a
service per selected object (``run_for_each``), and everything else is read-only.
"""

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.db import transaction

from core.errors import ServiceError
from core.models import Event


class NoWrites:
    """No add, change or delete through the admin's forms: state changes only through services."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(NoWrites, admin.ModelAdmin):
    """Shows rows; actions declared with ``permissions=["operate"]`` (which call services) need the
    model's Django change permission."""

    def has_operate_permission(self, request):
        return admin.ModelAdmin.has_change_permission(self, request)


class ReadOnlyInline(NoWrites, admin.TabularInline):
    """An inline list of related rows that cannot be added, changed or deleted here."""

    extra = 0
    show_change_link = True


def run_for_each(modeladmin, request, queryset, call: Callable[[object, str], str | None], *, done: str = "") -> None:
    """Call ``call(obj, actor)`` for every selected object and report each outcome as a message.

    ``call`` returns a success text (or None for ``done``). A ``ServiceError`` becomes that object's
    error message: it neither stops the other objects nor turns into a 500.
    """
    actor = request.user.username
    for obj in queryset:
        try:
            result = call(obj, actor)
        except ServiceError as err:
            modeladmin.message_user(request, f"{obj}: {err.detail}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"{obj}: {result or done}", messages.SUCCESS)


class ServiceForm(forms.ModelForm):
    """A ModelForm whose save is a service call (``call_service``), so the admin validates like the API.

    ``clean()`` runs the call in a savepoint that is always rolled back: whatever ``InvalidInput`` or
    ``Conflict`` the service would raise becomes a form error before anything is written.
    """

    def call_service(self, *, user=None):
        raise NotImplementedError

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            with transaction.atomic():
                self.call_service()
                transaction.set_rollback(True)
        except ServiceError as err:
            self.add_error(self.error_field(err), err.detail)
        return cleaned

    def error_field(self, err: ServiceError) -> str | None:
        """The form field an error belongs to (None: the whole form)."""
        field = err.extra.get("field")
        return field if field in self.fields else None


class ServiceFormAdmin(admin.ModelAdmin):
    """Saves the main object through ``form.call_service``; the admin never saves the model itself."""

    def save_form(self, request, form, change):
        return form.call_service(user=request.user)

    def save_model(self, request, obj, form, change):
        pass  # already saved by the service in save_form

    def save_related(self, request, form, formsets, change):
        for formset in formsets:  # no form.save_m2m(): the form never called save()
            self.save_formset(request, form, formset, change=change)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """The event log, newest first. Nobody edits history."""

    list_display = ("created_at", "project", "resource_type", "resource_name", "kind", "message", "actor")
    list_filter = ("resource_type", "kind", "project")
    list_select_related = ("project",)
    search_fields = ("resource_name", "message", "actor")
