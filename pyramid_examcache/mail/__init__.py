"""The Huey-backed transactional mailer (filled in by the mailer work)."""


def includeme(config):
    pass
