def includeme(config):
    # step 3: a page of one MyModel row (GET: cached, POST: changes it)
    config.add_route('model', '/models/{name}')
    # step 6: the mail routes
    config.add_route('subscribe', '/subscribe')
    config.add_route('job', '/jobs/{id}')
