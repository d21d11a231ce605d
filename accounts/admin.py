from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import ApiKey, Membership, Organization, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The hash is never shown: it is a credential check, not data for people.
    list_display = ["name", "prefix", "user", "organization", "scopes", "key_pool_mode", "last_used_at", "revoked_at"]
    list_filter = ["key_pool_mode", "byok_fallback"]
    search_fields = ["name", "prefix", "user__email"]
    exclude = ["hashed_key"]
    # Scopes are the member's grant, made once at creation (api_key_create refuses escalation); staff see
    # them but do not widen a key behind its owner's back.
    # The monthly limit too: set at creation only (accounts.models.ApiKey.monthly_limit says why).
    readonly_fields = ["prefix", "scopes", "monthly_limit", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are created by members or `manage.py create_api_key`, which show the key once
