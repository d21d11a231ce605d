"""Users, organizations and gateway API keys.

A *billing owner* is a user, or an organization for its members' requests made
with an organization's API key. Gateway API keys are stored only as a SHA-256
hash plus a short display prefix: the key itself is shown once, at creation.
"""

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from core.masking import masked_head


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra):
        if not email:
            raise ValueError("An e-mail address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create(email, password, **extra)


class User(AbstractUser):
    username = None
    email = models.EmailField("e-mail address", unique=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(User, through="Membership", related_name="organizations")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKeyScope(models.TextChoices):
    GATEWAY = "gateway", "Gateway: call /v1"
    READ = "read", "Read: the management API's GETs"
    KEYS = "keys", "Keys: create and revoke API keys, add and change provider keys"
    MONEY = "money", "Money: convert frozen balance to main (never withdraw)"


def gateway_only() -> list[str]:
    """A new API key's scopes: the gateway alone (a key pasted into an SDK config cannot manage anything)."""
    return [ApiKeyScope.GATEWAY]


class ApiKey(models.Model):
    Scope = ApiKeyScope

    class PoolMode(models.TextChoices):
        ANY = "any", "Any key (platform and exchange)"
        PLATFORM_ONLY = "platformOnly", "Platform keys only"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="When set, the organization is the billing owner of this key's requests.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, for display.")
    hashed_key = models.CharField(max_length=64, unique=True)
    key_pool_mode = models.CharField(max_length=16, choices=PoolMode.choices, default=PoolMode.ANY)
    byok_fallback = models.BooleanField(
        default=True, help_text="Fall over to platform keys when the owner's own keys are out of capacity."
    )
    # Set when the key is made, never changed (no endpoint nor admin field writes it): the gateway keeps a
    # month's spend counter (billing.models.ApiKeyMonthlySpend) only for keys made with a limit, so a
    # limit added later would start from a counter that missed the month's earlier charges.
    monthly_limit = models.BigIntegerField(
        null=True, blank=True, help_text="Spend limit per calendar month (UTC), in nanodollars."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scopes = ArrayField(
        models.CharField(max_length=16, choices=Scope.choices), default=gateway_only,
        help_text="What the key may do. Withdrawals are never an API key's: they need a recent sign-in.",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_limit__isnull=True) | Q(monthly_limit__gte=0), name="api_key_limit_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(scopes__contained_by=ApiKeyScope.values), name="api_key_scopes_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return masked_head(self.prefix)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def billing_owner(self) -> "User | Organization":
        return self.organization if self.organization_id else self.user
