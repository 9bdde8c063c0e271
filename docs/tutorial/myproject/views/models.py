from pyramid.httpexceptions import HTTPBadRequest, HTTPNotFound
from pyramid.view import view_config

from ..models import MyModel


def get_model(request):
    name = request.matchdict['name']
    model = request.dbsession.query(MyModel).filter_by(name=name).one_or_none()
    if model is None:
        raise HTTPNotFound(f'no model named {name!r}')
    return model


@view_config(route_name='model', request_method='GET', renderer='json',
             cache='mymodel:{name}', cache_ttl=600, cache_public=True)
def show_model(request):
    model = get_model(request)
    return {'name': model.name, 'value': model.value}


@view_config(route_name='model', request_method='POST', renderer='json')
def update_model(request):
    try:
        value = int(request.POST['value'])
    except (KeyError, ValueError):
        raise HTTPBadRequest('value: an integer is required') from None
    model = get_model(request)
    model.value = value    # invalidates mymodel:{name} once the transaction commits
    return {'name': model.name, 'value': model.value}
