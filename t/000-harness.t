# Self-test of the test harness (t/compat runner, t/lib/AaiTest.pm and the
# services t/run-tests starts), using only stock nginx features.  It must
# pass under both our runner and OpenResty's real Test::Nginx::Socket.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# AaiTest::redis_cmd against the redis that t/run-tests started
is(redis_cmd('SET', 'aai:harness:key', 'v1'), 'OK', 'redis SET');
is(redis_cmd('GET', 'aai:harness:key'), 'v1', 'redis GET');
is(redis_cmd('DEL', 'aai:harness:key'), 1, 'redis DEL');
is(redis_cmd('GET', 'aai:harness:key'), undef, 'redis nil reply');

# extra services for the blocks below: a port that never answers and a
# second nginx instance (same binary and modules)
$ENV{TEST_NGINX_HUNG_PORT} = hung_listener();
my ($b_port, $b_stop) = start_nginx_instance('b', <<'_EOC_');
    server {
        listen $TEST_NGINX_INSTANCE_PORT;
        location / {
            add_header X-Instance b;
            return 200 "instance b $uri";
        }
    }
_EOC_
$ENV{TEST_NGINX_B_PORT} = $b_port;
{
    my ($st, $h, $body) = http_get($b_port, '/hello', { 'X-A' => 1 });
    is($st, 200, 'http_get status');
    is($h->{'x-instance'}, 'b', 'http_get header');
    is($body, 'instance b /hello', 'http_get body');
}

# a disposable redis that can be stopped and restarted on the same port
{
    my $rp = start_redis();
    is(redis_cmd_port($rp, 'SET', 'k', 'x'), 'OK', 'extra redis up');
    AaiTest::restart_redis($rp, sub {
        ok(!eval { redis_cmd_port($rp, 'PING'); 1 }, 'extra redis down');
    });
    is(redis_cmd_port($rp, 'GET', 'k'), undef, 'extra redis restarted empty');
    stop_redis($rp);
}

# the Kafka mock: produce with kcat, read back, broker control
SKIP: {
    skip 'no TEST_NGINX_KAFKA_BROKERS', 4
        unless $ENV{TEST_NGINX_KAFKA_BROKERS};
    my $topic = "aai-harness-$$";
    open my $p, '|-', 'kcat', '-P', '-q', '-b',
        $ENV{TEST_NGINX_KAFKA_BROKERS}, '-t', $topic, '-K:'
        or die "kcat: $!";
    print $p "k1:hello\nk2:world\n";
    close $p;
    my @m = sort { $a->{key} cmp $b->{key} } kafka_consume($topic, 2, 10);
    is(scalar @m, 2, 'kafka_consume count');
    is(join(',', map { "$_->{key}=$_->{payload}" } @m), 'k1=hello,k2=world',
       'kafka_consume keys and payloads');
    ok(kafka_broker_down(2), 'kmock broker down');
    ok(kafka_broker_up(2), 'kmock broker up');
}

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: sanity: return 200
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- error_code: 200
--- no_error_log
[error]



=== TEST 2: response headers present, absent and a non-200 status
--- config
    location = /t {
        add_header X-Aai-Test yes always;
        return 418 "teapot";
    }
--- request
GET /t
--- error_code: 418
--- response_headers
X-Aai-Test: yes
!X-Not-There
Content-Type: text/plain
--- response_body chomp
teapot



=== TEST 3: several requests in sequence, one connection each
--- config
    location = /a {
        return 200 "a";
    }
    location = /b {
        return 404;
    }
--- request eval
["GET /a", "GET /b", "GET /a"]
--- error_code eval
[200, 404, 200]
--- response_body_like eval
["^a\$", "404 Not Found", "^a\$"]
--- response_headers eval
["Content-Length: 1", "", "!X-Nothing"]



=== TEST 4: request body and more_headers reach nginx
--- config
    location = /echo {
        return 200 "$request_method $http_x_foo $content_length";
    }
--- more_headers
X-Foo: bar
--- request
POST /echo
hello world
--- response_body chomp
POST bar 11



=== TEST 5: error_log sees what a request logs, no_error_log does not
--- config
    location = /missing {
        root html;
    }
--- request
GET /missing
--- error_code: 404
--- error_log eval
qr/open\(\) ".*?missing" failed/
--- no_error_log
[alert]
[crit]



=== TEST 6: $TEST_NGINX_* expansion in config and response_body
--- config
    location = /port {
        return 200 "redis=$TEST_NGINX_REDIS_PORT";
    }
--- request
GET /port
--- response_body eval
"redis=$ENV{TEST_NGINX_REDIS_PORT}"



=== TEST 7: must_die on a bad directive
--- config
    location = /t {
        return 200 "a" "b";
    }
--- must_die
--- error_log
invalid number of arguments in "return" directive



=== TEST 8: http_config and main_config sections
--- main_config
env AAI_HARNESS_MAIN_CONFIG;
--- http_config
    map $uri $aai_harness {
        default "mapped";
    }
--- config
    location = /t {
        return 200 "$aai_harness";
    }
--- request
GET /t
--- response_body chomp
mapped



=== TEST 9: aai_before / aai_after hooks run around the block
--- aai_before
redis_cmd('SET', 'aai:harness:hook', 'before');
--- config
    location = /t {
        return 200 "ok";
    }
--- request
GET /t
--- response_body chomp
ok
--- aai_after
is(redis_cmd('GET', 'aai:harness:hook'), 'before', 'aai_before ran');
redis_cmd('DEL', 'aai:harness:hook');



=== TEST 10: pipelined requests on one connection
--- config
    location = /p {
        return 200 "p$arg_n";
    }
--- pipelined_requests eval
["GET /p?n=1", "GET /p?n=2"]
--- response_body eval
["p1", "p2"]
--- error_code eval
[200, 200]



=== TEST 11: proxy to a listener that never answers times out
--- config
    location = /t {
        proxy_connect_timeout 1s;
        proxy_read_timeout 200ms;
        proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
    }
--- request
GET /t
--- error_code: 504
--- error_log
upstream timed out



=== TEST 12: a second nginx instance answers beside the tested one
--- config
    location = /t {
        proxy_pass http://127.0.0.1:$TEST_NGINX_B_PORT/via-a;
    }
--- request
GET /t
--- response_body chomp
instance b /via-a
--- response_headers
X-Instance: b



=== TEST 13: repeat_each-independent request with a timeout section
--- config
    location = /t {
        return 200 "ok";
    }
--- request
GET /t
--- timeout: 2
--- wait: 0.05
--- response_body chomp
ok
