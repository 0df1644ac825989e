# ngx_http_aai_ratelimit_module's Redis 7 function library: loaded on the
# first check (FUNCTION LOAD REPLACE after "Function not found") and after
# a FUNCTION FLUSH, the checks still right; what Redis runs per check
# (INFO commandstats: FCALL, no EVALSHA); and the fallback to EVALSHA on a
# Redis that refuses functions (FCALL or FUNCTION renamed away, or denied
# to the user by its ACL), logged once.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Digest::SHA qw( sha1_hex );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

sub slurp {
    my $path = shift;
    open(my $fh, '<:raw', $path) or die "$path: $!\n";
    local $/;
    return scalar <$fh>;
}

# the library's name, as ngx_http_aai_ratelimit_script.c makes it
my $LUA = slurp('lua/ratelimit.lua');
my $FN = 'aai_ratelimit_'
         . substr(sha1_hex($LUA . slurp('lua/ratelimit_library.lua')), 0, 12);

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone f037 key=$arg_u rate=2r/m;
    aai_ratelimit_zone g037 key=$arg_u rate=2r/m algorithm=gcra;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /s { aai_ratelimit f037; empty_gif; }
        location /g { aai_ratelimit g037; empty_gif; }
    }
_EOC_

sub status_of {
    my ($port, $path) = @_;
    my ($st) = http_get($port, $path, {});
    return $st // 0;
}

# the statuses of n requests, one after the other
sub statuses {
    my ($port, $path, $n) = @_;
    return join ' ', map { status_of($port, $path) } 1 .. $n;
}

# the calls of each command in INFO commandstats ("fcall" => 3, ...)
sub commandstats {
    my $port = shift;
    my %c;
    my $info = redis_cmd_port($port, 'INFO', 'commandstats');
    $c{$1} = $2 while $info =~ /^cmdstat_(\S+?):calls=(\d+)/mg;
    return \%c;
}

# the library's functions in FUNCTION LIST, "name flags" sorted
sub functions {
    my $port = shift;
    my $l = redis_cmd_port($port, 'FUNCTION', 'LIST', 'LIBRARYNAME', $FN);
    my @f;
    for my $lib (@$l) {
        my %lib = @$lib;
        next unless $lib{library_name} eq $FN;
        for my $f (@{ $lib{functions} }) {
            my %f = @$f;
            push @f, join ' ', $f{name}, @{ $f{flags} };
        }
    }
    return join ', ', sort @f;
}

# --- the library, loaded on first use and after FUNCTION FLUSH ------------

# (a key that was rejected is blocklisted in nginx: its next requests do
# not reach Redis, so each check counted below has a key of its own)

{
    my $rp = $ENV{TEST_NGINX_REDIS_PORT};
    my ($port, $stop, $prefix) = start_nginx_instance('rl037', $conf);

    redis_flushdb();
    redis_cmd('FUNCTION', 'FLUSH');

    is(statuses($port, '/s?u=first', 1), '200', 'first check: admitted');
    is(functions($rp), "$FN, ${FN}_x allow-cross-slot-keys",
       'first check: the library is in FUNCTION LIST, both functions');

    redis_cmd('CONFIG', 'RESETSTAT');
    is(statuses($port, '/s?u=first', 2), '200 429',
       'then FCALL: the 2nd admitted, the 3rd rejected (2r/m)');
    is(statuses($port, '/g?u=first', 2), '200 429',
       'then FCALL: GCRA, the 2nd rejected (one per 30 s)');
    is(join(' ', map { status_of($port, "/s?u=c$_") } 1 .. 3), '200 200 200',
       'then FCALL: three keys admitted');
    my $c = commandstats($rp);
    is($c->{fcall}, 7, 'commandstats: one FCALL per check');
    ok(!$c->{evalsha} && !$c->{eval} && !$c->{'function|load'},
       'commandstats: no EVALSHA, EVAL or FUNCTION LOAD')
        or diag(join ' ', %$c);

    # a flushed Redis (or a failover to a node without the library): the
    # next check loads it again, and answers from the keys as before

    is(statuses($port, '/s?u=keep', 1), '200', 'before FUNCTION FLUSH: 1st');
    redis_cmd('FUNCTION', 'FLUSH');
    redis_cmd('CONFIG', 'RESETSTAT');
    is(statuses($port, '/s?u=keep', 1), '200',
       'after FUNCTION FLUSH: the 2nd admitted');
    $c = commandstats($rp);
    is($c->{'function|load'}, 1, 'after FUNCTION FLUSH: loaded again, once');
    is($c->{fcall}, 2, 'after FUNCTION FLUSH: not found, then FCALL');
    ok(!$c->{evalsha} && !$c->{eval}, 'after FUNCTION FLUSH: no EVAL');
    is(functions($rp), "$FN, ${FN}_x allow-cross-slot-keys",
       'after FUNCTION FLUSH: the library back in FUNCTION LIST');
    is(statuses($port, '/s?u=keep', 1), '429',
       'after FUNCTION FLUSH: the 3rd rejected, the key kept');

    # the library of another version (another name) is left alone

    my $other = $LUA;
    $other =~ s/^return check\(KEYS, ARGV\)\n\z//m or die "no EVAL line\n";
    redis_cmd('FUNCTION', 'LOAD', "#!lua name=aai_ratelimit_0123456789ab\n"
              . "local library = 'aai_ratelimit_0123456789ab'\n$other"
              . slurp('lua/ratelimit_library.lua'));
    is(statuses($port, '/s?u=v2', 1), '200', 'two versions: admitted');
    my $libs = redis_cmd('FUNCTION', 'LIST', 'LIBRARYNAME', 'aai_ratelimit_*');
    is(scalar @$libs, 2, 'two versions: both libraries kept');
    redis_cmd('FUNCTION', 'DELETE', 'aai_ratelimit_0123456789ab');

    no_log_problems("$prefix/logs/error.log", 'no error logged');

    $stop->();
}

# --- a Redis that refuses functions: EVALSHA ------------------------------

# redis-server with extra arguments, on a port of its own
my @Spawned;
sub redis_with {
    my ($name, @args) = @_;
    my $rp = free_port();
    my $dir = "t/servroot-rl037-$name";
    mkdir $dir;
    push @Spawned, spawn(['redis-server', '--port', $rp, '--bind',
                          '127.0.0.1', '--save', '', '--appendonly', 'no',
                          '--dir', $dir, @args],
                         log => "$dir/redis.log");
    wait_until(5, sub { eval { redis_cmd_port($rp, 'PING') } })
        or die "redis-server $name did not start (see $dir/redis.log)\n";
    return $rp;
}
END { local $?; stop_pid($_) for @Spawned; }

# name, what, the FCALLs Redis runs (not found), redis-server's arguments
for my $case (['nofcall', 'FCALL and FUNCTION renamed away (as Redis < 7)',
               0, '--rename-command', 'FCALL', '', '--rename-command',
               'FUNCTION', ''],
              ['noload', 'FUNCTION renamed away', 1, '--rename-command',
               'FUNCTION', ''],
              ['acl', 'FCALL and FUNCTION denied to the user', 0, '--user',
               'default', 'on', 'nopass', '~*', '&*', '+@all', '-fcall',
               '-function'])
{
    my ($name, $what, $fcalls, @args) = @$case;
    my $rp = redis_with($name, @args);

    (my $c = $conf) =~ s/\$TEST_NGINX_REDIS_PORT/$rp/;
    my ($port, $stop, $prefix) = start_nginx_instance("rl037$name", $c);

    is(statuses($port, '/s?u=old', 3), '200 200 429',
       "$what: the checks right");
    is(statuses($port, '/g?u=old', 2), '200 429', "$what: GCRA right");
    is(join(' ', map { status_of($port, "/s?u=c$_") } 1 .. 3), '200 200 200',
       "$what: three keys admitted");

    my $cs = commandstats($rp);
    is($cs->{evalsha}, 8, "$what: one EVALSHA per check");
    is($cs->{eval}, 1, "$what: one EVAL after NOSCRIPT");
    is($cs->{fcall} // 0, $fcalls, "$what: FCALLs run: $fcalls");
    ok(!$cs->{'function|load'}, "$what: no FUNCTION LOAD run");

    my @l = grep { /Redis refused functions/ }
            file_lines("$prefix/logs/error.log");
    is(scalar @l, 1, "$what: logged once");
    like($l[0] // '', qr/\[notice\].*EVALSHA/, "$what: at notice");
    no_log_problems("$prefix/logs/error.log", "$what: no error logged");

    $stop->();
}

run_tests();

__DATA__

=== TEST 1: a check on the runner's own nginx, through the library
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone one037 key=$arg_u rate=10r/m;
--- config
    location /t {
        aai_ratelimit one037;
        empty_gif;
    }
--- request
GET /t?u=data
--- error_code: 200
