def includeme(config):
    config.add_route('model', '/models/{name}')
    # step 5: the mail routes
    config.add_route('subscribe', '/subscribe')
    config.add_route('job', '/jobs/{id}')
