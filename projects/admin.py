"""Operator views for projects and their members.

The admin writes nothing itself: forms save through a service (``ServiceForm``), actions call a
service per selected object (``run_for_each``), and everything else is read-only.
"""

from django.contrib import admin

from core.admin import ReadOnlyAdmin, ServiceForm, ServiceFormAdmin, run_for_each
from projects.models import ApiToken, Membership, Project
from projects.services import add_member, create_project
from projects.tokens import revoke_token


class ProjectForm(ServiceForm):
    class Meta:
        model = Project
        fields = ("name",)

    def call_service(self, *, user=None):
        if self.instance.pk:
            return self.instance  # a project has nothing editable; members are saved by the inline
        return create_project(name=self.cleaned_data["name"], owner=user)


class MembershipInline(admin.TabularInline):
    """Members are added (or their role changed) through ``add_member``; removal has no service yet."""

    model = Membership
    extra = 0
    autocomplete_fields = ("user",)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(ServiceFormAdmin):
    """Projects are created with ``create_project`` (the creator becomes admin, like the API)."""

    form = ProjectForm
    list_display = ("name", "created_at")
    search_fields = ("name",)

    def get_readonly_fields(self, request, obj=None):
        return ("name", "created_at") if obj else ()

    def get_inlines(self, request, obj):
        return [MembershipInline] if obj else []

    def save_formset(self, request, form, formset, change):
        for membership in formset.save(commit=False):
            add_member(project=membership.project, user=membership.user, role=membership.role,
                       actor=request.user.username)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Tokens are listed and revoked here, never shown: only a digest is stored, and the admin does not
    even show that. New tokens are made where they can be shown once (``manage.py createtoken``, the API)."""

    list_display = ("user", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("revoked_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "name", "prefix")
    fields = ("user", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens", permissions=["operate"])
    def revoke(self, request, queryset):
        run_for_each(self, request, queryset, _revoke)


def _revoke(token: ApiToken, actor: str) -> str:
    return f"revoked at {revoke_token(token).revoked_at:%Y-%m-%d %H:%M:%S} UTC"
