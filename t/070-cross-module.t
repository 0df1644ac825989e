# The three modules on one location: the limiter decides before the cache
# looks up (a rejected request costs no cache lookup and is not served
# from the cache), a cache hit still counts against the user's quota, and
# the Kafka event of each request carries the user, the limit outcome and
# the cache outcome of that same request.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use AaiJwt;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $topic = "x070x$$" . int(rand(1e6));
my $jwt = jwt_dir();

my ($app_port, $app_stop, $app_prefix) = start_nginx_instance('x070app',
                                                              <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location / {
            add_header Cache-Control "public, max-age=60";
            return 200 "app $uri\n";
        }
    }
_EOC_

my ($port, $stop, $prefix) = start_nginx_instance('x070', <<"_EOC_");
    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=2s
                        connect_timeout=2s;
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=2s
                    connect_timeout=2s;
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_jwt_key rs256 file=$jwt/rsa.pub;
    aai_jwt_token \$http_authorization;
    aai_ratelimit_zone x070 key=\$aai_user rate=2r/m;

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / {
            aai_ratelimit x070;
            aai_cache on;
            aai_kafka_event $topic key=\$http_x_n;
            add_header X-RL \$aai_ratelimit_status always;
            add_header X-Status \$aai_cache_status always;
            proxy_pass http://127.0.0.1:$app_port;
        }
    }
_EOC_

sub as {
    my ($user, $n) = @_;
    my $auth = 'Bearer ' . jwt(alg => 'RS256', claims => { sub => $user });
    my ($st, $h, $body) = http_get($port, '/p',
                                   { Authorization => $auth, 'X-N' => $n });
    return join ' ', $st // 'none', $h->{'x-rl'} // '',
                     $h->{'x-status'} || '-', $body // '';
}

sub upstream_count {
    return scalar grep { m{"GET /p } }
                  file_lines("$app_prefix/logs/access.log");
}

redis_flushdb();

is(as('alice', 1), "200 PASSED MISS app /p\n", 'alice 1: passed, a miss');
ok(wait_until(5, sub { @{ redis_cmd('KEYS', 'aai:c:*') } }),
   'the response is stored');

is(as('alice', 2), "200 PASSED HIT app /p\n",
   'alice 2: passed, a hit (a hit is counted too)');

# the third of a 2r/m user: rejected before the cache looks up, so the
# cache sends no command to Redis and the response is not the cached one
my $r3;
my @cmds = grep { $_->{client} ne 'lua' }
           redis_monitor(sub { $r3 = as('alice', 3) });
like($r3, qr/^429 REJECTED - (?!app)/, 'alice 3: rejected, no cache status');
is(join(' ', map { $_->{args}[0] } @cmds), 'FCALL',
   'alice 3: the limiter asked Redis, the cache did not');

is(as('bob', 4), "200 PASSED HIT app /p\n",
   'bob 4: his own quota, the shared entry');
is(upstream_count(), 1, 'the application saw one request');

# the events: each carries its own request's user and outcomes

my @e = kafka_events($topic, 4);
my %by = map { ($_->{key} // '') => $_->{event} } @e;
my $got = join "\n", map {
    my $ev = $by{$_} || {};
    join ' ', $_, map { $ev->{$_} // 'null' } qw(user ratelimit cache status)
} 1 .. 4;
is($got, join("\n", '1 alice PASSED MISS 200', '2 alice PASSED HIT 200',
                    '3 alice REJECTED null 429', '4 bob PASSED HIT 200'),
   'events: user, limit and cache outcome of the same request');
is(scalar @e, 4, 'events: one per request');

no_log_problems("$prefix/logs/error.log", 'no alert, no crash');

$stop->();
$app_stop->();
no_log_problems("$prefix/logs/error.log", 'none at exit either');

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the limiter runs before the cache on the runner's nginx too
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone one key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit one;
        aai_cache on;
        add_header X-RL $aai_ratelimit_status always;
        add_header X-Status "[$aai_cache_status]" always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/app;
    }
    location /app {
        return 200 "app\n";
    }
--- aai_before
redis_flushdb();
--- request eval
["GET /t?u=x070", "GET /t?u=x070"]
--- error_code eval
[200, 429]
--- response_headers eval
["X-RL: PASSED\nX-Status: [MISS]", "X-RL: REJECTED\nX-Status: []"]
