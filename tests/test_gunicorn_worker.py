"""gunicorn_worker's per-connection path against the gunicorn it mirrors (pure: no server;
every server the suite starts runs through it)."""
import gunicorn
from gunicorn.config import Config

from fonana_realtime.gunicorn_worker import MIRRORS_GUNICORN, ConfigReadOnce


def test_the_mirrored_gunicorn_is_the_installed_one():
    assert gunicorn.__version__ == MIRRORS_GUNICORN, (
        "DrainingGeventWorker.handle mirrors gunicorn's AsyncWorker.handle of "
        f"{MIRRORS_GUNICORN}: compare it with {gunicorn.__version__}'s, then update MIRRORS_GUNICORN")


def test_config_read_once_answers_every_setting_as_gunicorn_does():
    plain, once = Config(), Config()
    plain.set("keepalive", 7)
    once.set("keepalive", 7)
    once.__class__ = ConfigReadOnce
    for name in plain.settings:
        assert getattr(once, name) == getattr(plain, name), name
        assert name in once.__dict__ or isinstance(getattr(Config, name, None), property), name
        assert getattr(once, name) == getattr(plain, name), name      # the kept value
    assert once.keepalive == 7
