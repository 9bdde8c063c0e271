from pyramid_examcache.testing import get_mail_capture


def test_a_committed_write_invalidates_the_cached_page(testapp, one):
    assert testapp.get('/models/one').headers['X-Cache'] == 'MISS'
    assert testapp.get('/models/one').headers['X-Cache'] == 'HIT'

    testapp.post('/models/one', {'value': '2'})

    page = testapp.get('/models/one')
    assert page.headers['X-Cache'] == 'MISS'
    assert page.json == {'name': 'one', 'value': 2}


def test_bad_input_changes_nothing(testapp, one):
    testapp.get('/models/one')
    testapp.post('/models/one', {'value': 'two'}, status=400)
    page = testapp.get('/models/one')
    assert page.headers['X-Cache'] == 'HIT' and page.json['value'] == 1


def test_subscribing_sends_the_welcome_mail(testapp):
    job_id = testapp.post('/subscribe', {'email': 'ada@example.com'}).json['jobId']

    mail = get_mail_capture(testapp).last
    assert mail.to == ['ada@example.com']
    assert mail.subject == 'Welcome to myproject'
    assert mail.job_id == job_id
    assert testapp.get(f'/jobs/{job_id}').json['state'] == 'completed'


def test_a_refused_address_sends_nothing(testapp):
    testapp.post('/subscribe', {'email': 'nobody'}, status=400)
    assert get_mail_capture(testapp).outbox == []
