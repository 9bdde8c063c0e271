from pyramid.httpexceptions import HTTPBadRequest, HTTPNotFound
from pyramid.view import view_config


@view_config(route_name='subscribe', request_method='POST', renderer='json')
def subscribe(request):
    email = request.POST.get('email', '').strip()
    if '@' not in email:
        raise HTTPBadRequest('email: an address is required')
    job = request.mailer.send_queued(
        to=email,
        subject='Welcome to myproject',
        text='Thanks for subscribing.',
        html='<p>Thanks for subscribing.</p>',
    )
    return {'jobId': job.id}


@view_config(route_name='job', renderer='json')
def job_status(request):
    status = request.mailer.job_status(request.matchdict['id'])
    if status is None:
        raise HTTPNotFound('no such job')
    return status
