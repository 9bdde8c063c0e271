from pyramid.config import Configurator


def main(global_config, **settings):
    """ This function returns a Pyramid WSGI application.
    """
    with Configurator(settings=settings) as config:
        config.include('.routes')
        config.include('.models')          # includes pyramid_tm
        config.include('pyramid_examcache')  # step 2: after pyramid_tm
        config.scan()
    return config.make_wsgi_app()
