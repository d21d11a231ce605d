import factory

from accounts.models import User
from accounts.services import user_create


class UserFactory(factory.django.DjangoModelFactory):
    """Users made the way real ones are, through the service: by default signed up and verified, so with
    their signup credit; `verified=False` is a sign-up that has not proven its address (no credit)."""

    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"member{n}@example.com")
    password = "correct-horse-battery-staple"
    verified = True

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return user_create(**kwargs)
