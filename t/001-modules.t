# The suite's .so files load together, in any order, beside Debian's other
# nginx modules (libnginx-mod-nchan carries and exports its own hiredis 1.x),
# and export nothing but what nginx looks up.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use File::Temp qw(tempdir);
use File::Path qw(make_path);
use File::Spec ();

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my @so = grep { $_ } split /\s+/, ($ENV{TEST_NGINX_LOAD_MODULES} // '');
my $nginx = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $nchan = '/usr/lib/nginx/modules/ngx_nchan_module.so';

# 0. every module the build makes is there to test (the suite must not pass
#    against a plain nginx): AAI_EXPECT_MODULES names them when a build
#    makes fewer

my @expect = split ' ', ($ENV{AAI_EXPECT_MODULES}
                         // 'ratelimit cache kafka redistest');
for my $m (@expect) {
    my @f = grep { m{/ngx_http_aai_${m}_module\.so$} && -f } @so;
    is(scalar @f, 1, "ngx_http_aai_${m}_module.so is loaded by the harness");
}

# 1. exports: exactly ngx_modules, ngx_module_names, ngx_module_order

for my $so (@so) {
    my @syms = sort map { (split ' ')[2] // () }
               grep { /^\S+\s+[A-Z]\s/ } `nm -D --defined-only $so`;
    is("@syms", 'ngx_module_names ngx_module_order ngx_modules',
       "$so exports only nginx's three symbols");
}

# 2. load orders: nginx -t passes.  The rotations of the list put every
#    module first and last, and every pair in both orders (all 24 orders
#    of 4 modules prove no more: a module depends on no other; those of
#    the reversed list repeated these).  nchan loaded first (its hiredis
#    exported before ours are loaded) and last, each with all of ours.

sub orders {
    my @l = @_;
    return map { [@l[$_ .. $#l], @l[0 .. $_ - 1]] } 0 .. $#l;
}

sub conf_with {
    my ($dir, $mods, $http) = @_;
    my $load = join '', map { "load_module $_;\n" } @$mods;
    return <<"_EOC_";
$load
pid $dir/nginx.pid;
error_log $dir/error.log info;
worker_processes 1;
events { worker_connections 64; }
http {
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    access_log off;
$http
}
_EOC_
}

sub write_conf {
    my ($dir, $text) = @_;
    open my $fh, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!";
    print $fh $text;
    close $fh;
}

# runs the code with the environment the nginx it starts needs: under
# "make asan" the modules need the runtime preloaded, and its reports go
# where t/run-tests and the runner look for them
sub nginx_env(&) {
    my ($code) = @_;
    my $servroot = File::Spec->rel2abs($ENV{TEST_NGINX_SERVROOT}
                                       || 't/servroot');
    make_path($servroot) if $ENV{AAI_ASAN};
    local $ENV{LD_PRELOAD} = $ENV{AAI_ASAN} if $ENV{AAI_ASAN};
    local $ENV{ASAN_OPTIONS} = "detect_leaks=0:log_path=$servroot/asan"
        if $ENV{AAI_ASAN};
    return $code->();
}

# Debian's nchan is built for Debian's nginx: the nginx of an upstream
# tree (make NGINX_SRC=...) refuses it, and then the nchan cases are skipped
if (-f $nchan) {
    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/tmp";
    write_conf($dir, conf_with($dir, [$nchan], ''));
    my $out = nginx_env { `$nginx -t -p $dir -c $dir/nginx.conf 2>&1` };
    if ($? && $out =~ /version \d+ instead of|not binary compatible/) {
        diag("$nchan does not fit $nginx: nchan cases skipped");
        $nchan = '';
    }
}

my @orders = orders(@so);
push @orders, [$nchan, @so], [reverse(@so), $nchan] if -f $nchan;

for my $mods (@orders) {
    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/tmp";
    write_conf($dir, conf_with($dir, $mods, ''));
    my $out = nginx_env { `$nginx -t -p $dir -c $dir/nginx.conf 2>&1` };
    my $names = join ' ', map { m{([^/]+)\.so$} ? $1 : $_ } @$mods;
    is($?, 0, "nginx -t loads: $names") or diag $out;
}

# 3. nchan loaded FIRST, then the rate limiter: its Redis client still uses
#    its own hiredis (a limit of 2 gives 200, 200, 429)

SKIP: {
    my ($rl) = grep { /ratelimit/ } @so;
    skip 'needs libnginx-mod-nchan and the rate limiter', 3
        unless -f $nchan && $rl;

    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/tmp";
    my $port = free_port();
    my $user = "nchan-$$-" . time;

    write_conf($dir, conf_with($dir, [$nchan, $rl], <<"_EOC_"));
    aai_ratelimit_redis 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}
                        connect_timeout=2s timeout=2s;
    aai_ratelimit_zone nchan_order key=\$http_x_user rate=2r/m;
    server {
        listen 127.0.0.1:$port;
        location / {
            aai_ratelimit nchan_order;
            empty_gif;
        }
    }
_EOC_

    nginx_env { system("$nginx -p $dir -c $dir/nginx.conf") } == 0
        or die "cannot start nginx with nchan first";

    my @st = map { (http_get($port, '/', { 'X-User' => $user }))[0] } 1 .. 3;
    is("@st", '200 200 429', 'nchan first: limit of 2 enforced via Redis');

    kill 'QUIT', `cat $dir/nginx.pid` + 0;
    for (1 .. 50) { last unless -f "$dir/nginx.pid"; select undef, undef,
                    undef, 0.1 }

    my $log = do { local $/; open my $fh, '<', "$dir/error.log"; <$fh> };
    unlike($log, qr/\[(alert|emerg|crit)\]|exited on signal/,
           'nchan first: no alert, crash or signal in the error log');
    ok(!-f "$dir/nginx.pid", 'nchan first: nginx stopped');
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the modules loaded by the harness take their directives
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                        timeout=2s;
    aai_ratelimit_zone m001 key=$arg_u rate=10r/m;
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location = /t {
        aai_ratelimit m001;
        aai_cache on;
        aai_kafka_event aai-t001 key=$arg_u;
        add_header X-RL $aai_ratelimit_status;
        empty_gif;
    }
--- response_headers
X-RL: PASSED
--- request
GET /t?u=t001
--- error_code: 200
--- no_error_log
[alert]
[emerg]
