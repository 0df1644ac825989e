package AaiTest;

# Helpers for the aai-nginx .t files.  Core Perl and Debian's perl modules
# only, so that they work under our t/compat runner and under OpenResty's
# real Test::Nginx::Socket alike.  Use:
#
#     use Test::Nginx::Socket 'no_plan';
#     use lib 't/lib';
#     use AaiTest;
#
# Everything these helpers start (redis-servers, nginx instances, listening
# sockets) is stopped at END.  All network waits are bounded.
#
# Exported:
#   redis_cmd(@args)            one command to the harness redis
#                               (127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT}).
#                               Reply: string, integer, undef (nil), array
#                               ref; an error reply dies unless
#                               $AaiTest::RedisErrorsDie = 0, then it is
#                               returned as "-ERR ..." (with the minus).
#   redis_cmd_port($port, @args)  the same against another redis.
#   redis_flushdb()             FLUSHDB on the harness redis.
#   free_port()                 a TCP port free on 127.0.0.1 right now.
#   start_redis(%o)             a disposable redis-server (o: port => N to
#                               reuse a port, e.g. after stop_redis); returns
#                               its port.
#   stop_redis($port)           stops it (TERM, bounded, then KILL).
#   start_redis_cluster(%o)     six redis-server in cluster mode on free
#                               ports, three primaries with a replica each,
#                               made one cluster; returns their ports.
#   kill_redis($port)           SIGKILLs one (a cluster's failover).
#   hung_listener()             a port that accepts TCP connections (kernel
#                               backlog) and never answers; returns port.
#   start_nginx_instance($name, $http_conf, %o)
#                               an extra nginx with the same binary and
#                               TEST_NGINX_LOAD_MODULES, prefix
#                               "<servroot>-<name>", on a free port.
#                               $http_conf is what goes inside http { };
#                               $TEST_NGINX_INSTANCE_PORT in it is that port,
#                               other $TEST_NGINX_* are taken from %ENV.
#                               o: main_config => text (main level),
#                               workers => N (default 1; master process on),
#                               events => text (in events { }).
#                               Returns ($port, $stop_sub, $prefix); its log
#                               is "$prefix/logs/error.log".
#   http_get($port, $path, \%headers [, $method, $body])
#                               returns ($status, \%headers, $body); header
#                               names lower-case, repeated ones joined ", ".
#                               5 s timeout ($AaiTest::HttpTimeout).
#   http_concurrent([[$port, $path, \%headers], ...], abandon => [$i, ...])
#                               the requests at once (all connected, then
#                               all written, then read); the abandoned ones
#                               are closed unanswered; after_write => sub
#                               runs once all are written, before any is
#                               read (e.g. to SIGCONT a stopped worker).
#                               Returns one
#                               [$status, \%headers, $body] per request.
#   kafka_consume($topic, $count, $timeout)
#                               messages of $topic from the beginning via
#                               kcat on $ENV{TEST_NGINX_KAFKA_BROKERS}:
#                               waits until $count arrived or $timeout s
#                               (default 5) passed; $count undef = all
#                               present now.  Returns a list of hashes
#                               {topic, partition, offset, key, payload,
#                               headers}.
#   kafka_broker_down($id) / kafka_broker_up($id)
#                               via the kmock control port
#                               ($ENV{TEST_NGINX_KAFKA_CONTROL}); broker ids
#                               are 1..N.
#   file_lines($path)           lines of a file (e.g. an instance's log).
#
# Block sections (custom Test::Base sections; the real runner ignores
# unknown sections, these hooks make both runners execute them):
#   --- aai_before              Perl code run before the block's nginx
#                               starts (e.g. redis_flushdb(); or
#                               kafka_broker_down(1);)
#   --- aai_after               Perl code run after the block (its requests
#                               and log checks are done); use is()/ok()
#                               here to assert what is in Redis or Kafka.
# The code runs in package main with strict off; a die fails the block.

use strict;
use warnings;

use Exporter ();
use IO::Socket::INET ();
use IO::Select ();
use POSIX qw( :sys_wait_h SIGTERM SIGKILL );
use Time::HiRes qw( time sleep );
use File::Path qw( make_path remove_tree );
use File::Spec ();
use JSON::PP ();
use Errno qw( EAGAIN EWOULDBLOCK EINTR );
use Test::More ();

our @EXPORT = qw( redis_cmd redis_cmd_port redis_flushdb free_port
    start_redis stop_redis start_redis_cluster kill_redis hung_listener
    start_nginx_instance http_get
    http_concurrent
    kafka_consume kafka_broker_down kafka_broker_up file_lines );

our $RedisErrorsDie = 1;
our $RedisTimeout   = 3;
our $HttpTimeout    = 5;
our $HooksInstalled = 0;
our $NoLogRecheck  = 0;      # 1: no whole-log check after each block

my %RedisConn;       # port => socket
my %RedisProcs;      # port => { pid, dir }
my @Listeners;       # sockets held open by hung_listener
my %Instances;       # prefix => pid
my $Parent = $$;


# --- Redis -----------------------------------------------------------------

sub _resp_encode {
    my $out = '*' . scalar(@_) . "\r\n";
    for my $a (@_) {
        my $s = defined $a ? "$a" : '';
        utf8::encode($s) if utf8::is_utf8($s);
        $out .= '$' . length($s) . "\r\n$s\r\n";
    }
    return $out;
}

# Buffered reader over a socket with a deadline.
sub _read_more {
    my ($sock, $bufref, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    while (1) {
        my $left = $deadline - time;
        die "redis: timeout\n" if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($sock, my $chunk, 65536);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            die "redis: read: $!\n";
        }
        die "redis: connection closed\n" if $n == 0;
        $$bufref .= $chunk;
        return;
    }
}

sub _read_line {
    my ($sock, $bufref, $deadline) = @_;
    while ((my $i = index($$bufref, "\r\n")) < 0) {
        _read_more($sock, $bufref, $deadline);
    }
    my $i = index($$bufref, "\r\n");
    my $line = substr($$bufref, 0, $i);
    substr($$bufref, 0, $i + 2) = '';
    return $line;
}

sub _read_reply {
    my ($sock, $bufref, $deadline) = @_;
    my $line = _read_line($sock, $bufref, $deadline);
    my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
    if ($t eq '+') {
        return $rest;
    } elsif ($t eq '-') {
        die "redis error: $rest\n" if $RedisErrorsDie;
        return "-$rest";
    } elsif ($t eq ':') {
        return $rest + 0;
    } elsif ($t eq '$') {
        return undef if $rest < 0;
        while (length($$bufref) < $rest + 2) {
            _read_more($sock, $bufref, $deadline);
        }
        my $s = substr($$bufref, 0, $rest);
        substr($$bufref, 0, $rest + 2) = '';
        return $s;
    } elsif ($t eq '*') {
        return undef if $rest < 0;
        my @a;
        push @a, _read_reply($sock, $bufref, $deadline) for 1 .. $rest;
        return \@a;
    }
    die "redis: bad reply line \"$line\"\n";
}

sub redis_cmd_port {
    my ($port, @args) = @_;
    die "redis_cmd: no port (TEST_NGINX_REDIS_PORT unset?)\n" unless $port;
    for my $try (1, 2) {
        my $sock = $RedisConn{$port};
        if (!$sock) {
            $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $port,
                                          Proto => 'tcp',
                                          Timeout => $RedisTimeout)
                or die "redis: connect to 127.0.0.1:$port: $!\n";
            $sock->autoflush(1);
            $RedisConn{$port} = $sock;
        }
        my $deadline = time + $RedisTimeout;
        my $req = _resp_encode(@args);
        my $ok = eval {
            local $SIG{PIPE} = 'IGNORE';
            my $off = 0;
            while ($off < length $req) {
                my $n = syswrite($sock, $req, length($req) - $off, $off);
                die "redis: write: $!\n" unless defined $n;
                $off += $n;
            }
            1;
        };
        if (!$ok) {
            delete $RedisConn{$port};
            next if $try == 1;       # a stale connection: reconnect once
            die $@;
        }
        my $buf = '';
        my @r;
        $ok = eval { @r = (_read_reply($sock, \$buf, $deadline)); 1 };
        if (!$ok) {
            my $err = $@;
            if ($err =~ /^redis error:/) {
                die $err;
            }
            delete $RedisConn{$port};
            close $sock;
            next if $try == 1 && $err =~ /closed/;
            die $err;
        }
        return $r[0];
    }
}

sub redis_cmd {
    return redis_cmd_port($ENV{TEST_NGINX_REDIS_PORT}, @_);
}

sub redis_flushdb {
    return redis_cmd('FLUSHDB');
}


# --- ports, processes ------------------------------------------------------

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1)
        or die "free_port: $!\n";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub _wait_exit {
    my ($pid, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || $r == -1 && !kill(0, $pid);
        sleep 0.02;
    }
    return 0;
}

sub _servroot {
    my $r = $ENV{TEST_NGINX_SERVROOT} || 't/servroot';
    return File::Spec->rel2abs($r);
}

sub start_redis {
    my %o = @_;
    my $port = $o{port} || free_port();
    my $dir = _servroot() . "-redis-$port";
    remove_tree($dir);
    make_path($dir);
    my $pid = fork();
    die "start_redis: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$dir/redis.log";
        open STDERR, '>&', \*STDOUT;
        { no warnings 'exec';
          exec 'redis-server', '--port', $port, '--bind', '127.0.0.1',
               '--save', '', '--appendonly', 'no', '--dir', $dir,
               '--daemonize', 'no', '--logfile', ''; }
        POSIX::_exit(127);
    }
    $RedisProcs{$port} = { pid => $pid, dir => $dir };
    my $deadline = time + 5;
    while (time < $deadline) {
        my $pong = eval { redis_cmd_port($port, 'PING') };
        return $port if defined $pong && $pong eq 'PONG';
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $RedisProcs{$port};
            die "start_redis: redis-server exited (port $port busy?)\n";
        }
        sleep 0.05;
    }
    stop_redis($port);
    die "start_redis: redis-server on $port did not answer\n";
}

sub stop_redis {
    my $port = shift;
    my $p = delete $RedisProcs{$port} or return;
    if (my $s = delete $RedisConn{$port}) {
        close $s;
    }
    kill SIGTERM, $p->{pid};
    if (!_wait_exit($p->{pid}, 5)) {
        kill SIGKILL, $p->{pid};
        waitpid($p->{pid}, 0);
    }
    remove_tree($p->{dir});
}

# A Redis Cluster on loopback: six redis-server in cluster mode (three
# primaries, three replicas, cluster-node-timeout 1000), made one cluster by
# "redis-cli --cluster create".  The client and cluster bus ports are all
# free ports, held open together while they are picked so that no two are
# the same (a fixed base collided with sockets of the machine's ephemeral
# range under make asan).  Returns the ports
# once every node says cluster_state:ok; stop_redis() stops each, or
# kill_redis() SIGKILLs one (a primary, to see its replica take over).
sub start_redis_cluster {
    my %o = @_;
    my $n = $o{nodes} || 6;
    my @held = map {
        IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                              Proto => 'tcp', Listen => 1)
            or die "start_redis_cluster: $!\n";
    } 1 .. 2 * $n;
    my @all = map { $_->sockport } @held;
    close $_ for @held;
    my @ports = @all[0 .. $n - 1];
    my %bus = map { $ports[$_] => $all[$n + $_] } 0 .. $n - 1;
    for my $port (@ports) {
        my $dir = _servroot() . "-redis-$port";
        remove_tree($dir);
        make_path($dir);
        my $pid = fork();
        die "start_redis_cluster: fork: $!\n" unless defined $pid;
        if ($pid == 0) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>', "$dir/redis.log";
            open STDERR, '>&', \*STDOUT;
            { no warnings 'exec';
              exec 'redis-server', '--port', $port, '--bind', '127.0.0.1',
                   '--save', '', '--appendonly', 'no', '--dir', $dir,
                   '--cluster-enabled', 'yes',
                   '--cluster-port', $bus{$port},
                   '--repl-diskless-sync-delay', 0,
                   '--cluster-config-file', "$dir/nodes.conf",
                   '--cluster-node-timeout', $o{node_timeout} || 1000,
                   '--daemonize', 'no', '--logfile', ''; }
            POSIX::_exit(127);
        }
        $RedisProcs{$port} = { pid => $pid, dir => $dir };
    }
    for my $port (@ports) {
        my $deadline = time + 5;
        my $pong;
        while (time < $deadline) {
            $pong = eval { redis_cmd_port($port, 'PING') };
            last if defined $pong && $pong eq 'PONG';
            sleep 0.05;
        }
        die "start_redis_cluster: redis-server on $port did not answer\n"
            unless defined $pong && $pong eq 'PONG';
    }
    my $nodes = join ' ', map { "127.0.0.1:$_" } @ports;
    my $opts = '--cluster-replicas 1 --cluster-yes';
    my $out = `redis-cli --cluster create $nodes $opts 2>&1`;
    die "start_redis_cluster: redis-cli --cluster create failed: $out\n"
        if $?;
    my $deadline = time + 20;
    while (time < $deadline) {
        my $ok = grep {
            my $i = eval { redis_cmd_port($_, 'CLUSTER', 'INFO') } // '';
            $i =~ /cluster_state:ok/ && $i =~ /cluster_known_nodes:$n\b/;
        } @ports;
        # and every primary has a replica in sync (else none takes over)
        my $slots = eval { redis_cmd_port($ports[0], 'CLUSTER', 'SLOTS') };
        my $synced = grep {
            my $r = eval { redis_cmd_port($_, 'INFO', 'replication') } // '';
            $r =~ /role:slave/ && $r =~ /master_link_status:up/;
        } @ports;
        return @ports if $ok == $n && ref $slots eq 'ARRAY' && @$slots
                         && !(grep { ref $_ ne 'ARRAY' || @$_ < 4 } @$slots)
                         && $synced == $n - @$slots;
        sleep 0.1;
    }
    die "start_redis_cluster: the cluster did not become ok\n";
}

# SIGKILL one Redis started here (the cluster's failover tests)
sub kill_redis {
    my $port = shift;
    my $p = delete $RedisProcs{$port} or return;
    if (my $s = delete $RedisConn{$port}) {
        close $s;
    }
    kill SIGKILL, $p->{pid};
    waitpid($p->{pid}, 0);
    remove_tree($p->{dir});
}

sub hung_listener {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1024,
                                  ReuseAddr => 1)
        or die "hung_listener: $!\n";
    push @Listeners, $s;
    return $s->sockport;
}


# --- extra nginx instances -------------------------------------------------

sub _expand {
    my ($text, $port) = @_;
    $text =~ s/\$TEST_NGINX_INSTANCE_PORT\b/$port/g;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        defined $ENV{$1} ? $ENV{$1}
                         : die "start_nginx_instance: \$$1 is not set\n"
    }ge;
    return $text;
}

sub start_nginx_instance {
    my ($name, $http_conf, %o) = @_;
    die "start_nginx_instance: bad name\n" unless $name =~ /^[\w-]+$/;
    my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
    my $port = $o{port} || free_port();
    my $prefix = _servroot() . "-$name";
    if ($Instances{$prefix}) {
        die "start_nginx_instance: \"$name\" is already running\n";
    }
    remove_tree($prefix);
    make_path("$prefix/logs", "$prefix/conf", "$prefix/html");

    my $mods = join '', map { "load_module $_;\n" } grep { $_ }
               split /\s+/, ($ENV{TEST_NGINX_LOAD_MODULES} || '');
    my $main = _expand($o{main_config} // '', $port);
    my $http = _expand($http_conf // '', $port);
    my $workers = $o{workers} || 1;
    my $events = $o{events} // '';
    my $temp = join ' ', map { "${_}_temp_path $prefix/${_}_temp;" }
               qw(client_body proxy fastcgi scgi uwsgi);
    my $user = $> == 0 ? "user root;\n" : '';

    open my $out, '>', "$prefix/conf/nginx.conf"
        or die "start_nginx_instance: $!\n";
    print $out <<"_EOC_";
${mods}worker_processes $workers;
daemon on;
master_process on;
error_log $prefix/logs/error.log debug;
pid $prefix/logs/nginx.pid;
env LD_PRELOAD;
env ASAN_OPTIONS;
$user$main
events {
    worker_connections 256;
    $events
}
http {
    access_log $prefix/logs/access.log;
    $temp
    default_type text/plain;
$http
}
_EOC_
    close $out;

    my $pid = fork();
    die "start_nginx_instance: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        if ($ENV{AAI_ASAN}) {
            $ENV{LD_PRELOAD} = $ENV{AAI_ASAN};
            $ENV{ASAN_OPTIONS} = "detect_leaks=0:log_path=" . _servroot()
                                 . "/asan";
        }
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', "$prefix/logs/stderr.log";
        { no warnings 'exec';
          exec $bin, '-p', "$prefix/", '-c', "$prefix/conf/nginx.conf",
               '-e', "$prefix/logs/error.log"; }
        POSIX::_exit(127);
    }
    if (!_wait_exit($pid, 10) || $? != 0) {
        kill SIGKILL, $pid;
        my $err = join '', file_lines("$prefix/logs/stderr.log");
        die "start_nginx_instance: nginx \"$name\" failed to start: $err\n";
    }
    my $master;
    my $deadline = time + 3;
    while (time < $deadline) {
        my ($l) = file_lines("$prefix/logs/nginx.pid");
        if (defined $l && $l =~ /^(\d+)/) {
            $master = $1;
            last;
        }
        sleep 0.02;
    }
    die "start_nginx_instance: no pid file for \"$name\"\n" unless $master;
    $Instances{$prefix} = $master;

    my $stop = sub { _stop_instance($prefix) };
    return wantarray ? ($port, $stop, $prefix) : $port;
}

sub _children {
    my $ppid = shift;
    my @kids;
    opendir my $d, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $d) {
        open my $st, '<', "/proc/$p/stat" or next;
        my $s = <$st>;
        close $st;
        push @kids, $p if defined $s && $s =~ /^\d+ \(.*\) \S+ (\d+) /
                          && $1 == $ppid;
    }
    return @kids;
}

sub _alive {
    my $pid = shift;
    return 0 unless kill 0, $pid;
    open my $st, '<', "/proc/$pid/stat" or return 0;
    my $s = <$st>;
    return !($s =~ /^\d+ \(.*\) Z /);
}

sub _stop_instance {
    my $prefix = shift;
    my $pid = delete $Instances{$prefix} or return;
    my @kids = _children($pid);
    kill 'QUIT', $pid;
    my $deadline = time + 5;
    sleep 0.02 while time < $deadline && _alive($pid);
    for my $p ($pid, @kids) {
        kill SIGKILL, $p if _alive($p);
    }
    _keep_log_problems($prefix);
    _ubsan_reports($prefix) if $ENV{AAI_ASAN};
}

# UndefinedBehaviorSanitizer (make asan) writes its reports to stderr, which
# nginx sends to its error log (the runtime loaded by a module ignores
# UBSAN_OPTIONS' log_path when ASan's is preloaded): they are copied to an
# asan.* file of the servroot, which fails the block (t/compat) and the run
# (t/run-tests) as an AddressSanitizer report does.
sub _ubsan_reports {
    my $prefix = shift;
    my @ub = grep { /: runtime error: / }
             map { file_lines("$prefix/logs/$_") } qw(error.log stderr.log);
    return unless @ub;
    splice @ub, 20;
    (my $name = $prefix) =~ s{.*/}{};
    open my $out, '>>', _servroot() . "/asan.ubsan-$name" or return;
    print $out "UndefinedBehaviorSanitizer in nginx \"$name\":\n", @ub;
    close $out;
}


# --- HTTP client -----------------------------------------------------------

sub http_get {
    my ($port, $path, $hdrs, $method, $body) = @_;
    $method ||= 'GET';
    $path = '/' unless defined $path;
    my $deadline = time + $HttpTimeout;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $port, Proto => 'tcp',
                                     Timeout => $HttpTimeout)
        or return (undef, {}, "connect failed: $!");
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n"
              . "Connection: close\r\n";
    for my $k (sort keys %{ $hdrs || {} }) {
        $req .= "$k: $hdrs->{$k}\r\n";
    }
    $req .= "Content-Length: " . length($body) . "\r\n" if defined $body;
    $req .= "\r\n" . ($body // '');
    local $SIG{PIPE} = 'IGNORE';
    syswrite($sock, $req);

    my $raw = '';
    my $sel = IO::Select->new($sock);
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($sock, my $chunk, 65536);
        last if !defined $n && $! != EINTR && $! != EAGAIN;
        last if defined $n && $n == 0;
        $raw .= $chunk if $n;
    }
    close $sock;
    return _parse_http($raw);
}

# Requests at once: every connection is opened, then every request written,
# before any response is read.  Each of @$reqs is [port, path, {headers}].
# Connections whose index is in $o{abandon} are closed right after writing.
# Returns [status, {headers}, body] per request (status undef when none).
sub http_concurrent {
    my ($reqs, %o) = @_;
    my %abandon = map { $_ => 1 } @{ $o{abandon} || [] };
    my (@socks, %raw);
    local $SIG{PIPE} = 'IGNORE';
    for my $q (@$reqs) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $q->[0], Proto => 'tcp',
                                      Timeout => $HttpTimeout)
            or die "http_concurrent: connect: $!\n";
        push @socks, $s;
        $raw{"$s"} = '';
    }
    for my $i (0 .. $#$reqs) {
        my ($port, $path, $hdrs) = @{ $reqs->[$i] };
        my $req = "GET $path HTTP/1.1\r\nHost: localhost\r\n"
                  . "Connection: close\r\n";
        $req .= "$_: $hdrs->{$_}\r\n" for sort keys %{ $hdrs || {} };
        syswrite($socks[$i], "$req\r\n");
    }
    $o{after_write}->() if $o{after_write};
    my $sel = IO::Select->new();
    for my $i (0 .. $#socks) {
        if ($abandon{$i}) {
            close $socks[$i];
        } else {
            $sel->add($socks[$i]);
        }
    }
    my $deadline = time + $HttpTimeout;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(0.2)) {
            my $n = sysread($s, my $buf, 65536);
            next if !defined $n && ($! == EINTR || $! == EAGAIN);
            if (!$n) {
                $sel->remove($s);
                close $s;
                next;
            }
            $raw{"$s"} .= $buf;
        }
    }
    return map {
        $abandon{$_} ? [undef, {}, ''] : [_parse_http($raw{"$socks[$_]"})]
    } 0 .. $#socks;
}

sub _parse_http {
    my $raw = shift;
    my $i = index($raw, "\r\n\r\n");
    return (undef, {}, $raw) if $i < 0;
    my $head = substr($raw, 0, $i);
    my $body = substr($raw, $i + 4);
    my @lines = split /\r\n/, $head;
    my $status_line = shift @lines;
    my ($status) = $status_line =~ m{^HTTP/\d\.\d\s+(\d+)};
    my %h;
    for my $l (@lines) {
        my ($k, $v) = split /:\s*/, $l, 2;
        $k = lc $k;
        $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
    }
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $out .= substr($body, 0, $n);
            substr($body, 0, $n + 2) = '';
        }
        $body = $out;
    } elsif (defined $h{'content-length'}
             && length($body) > $h{'content-length'})
    {
        $body = substr($body, 0, $h{'content-length'});
    }
    return ($status, \%h, $body);
}


# --- Kafka -----------------------------------------------------------------

sub kafka_consume {
    my ($topic, $count, $timeout) = @_;
    return _kafka_read($topic, $count, $timeout, undef);
}

sub _kafka_read {
    my ($topic, $count, $timeout, $match) = @_;
    $timeout //= 5;
    my $brokers = $ENV{TEST_NGINX_KAFKA_BROKERS}
        or die "kafka_consume: TEST_NGINX_KAFKA_BROKERS is not set\n";
    my @cmd = ('kcat', '-C', '-b', $brokers, '-t', $topic, '-o', 'beginning',
               '-J', '-q', '-X', 'topic.metadata.refresh.interval.ms=200');
    my $deadline = time + $timeout;
    my @msgs;

    while (1) {
        # -e: exit at the end of every partition; retried until $count
        @msgs = ();
        my $pid = open(my $fh, '-|');
        die "kafka_consume: fork: $!\n" unless defined $pid;
        if ($pid == 0) {
            open STDERR, '>', '/dev/null';
            { no warnings 'exec'; exec @cmd, '-e'; }
            POSIX::_exit(127);
        }
        my $buf = '';
        my $sel = IO::Select->new($fh);
        my $done = 0;
        while (1) {
            my $left = $deadline - time;
            $left = 0.2 if $left < 0.2;
            last unless $sel->can_read($left);
            my $n = sysread($fh, my $chunk, 65536);
            if (!$n) {
                $done = 1;
                last;
            }
            $buf .= $chunk;
            last if time > $deadline + 1;
        }
        kill SIGKILL, $pid unless $done;
        close $fh;
        waitpid($pid, 0);
        for my $line (split /\n/, $buf) {
            my $m = eval { JSON::PP->new->decode($line) } or next;
            next if $match && !$match->($m);
            push @msgs, $m;
        }
        last if !defined $count || @msgs >= $count || time >= $deadline;
        sleep 0.1;
    }
    return @msgs;
}

sub _kmock_ctl {
    my ($cmd) = @_;
    my $port = $ENV{TEST_NGINX_KAFKA_CONTROL}
        or die "kmock control: TEST_NGINX_KAFKA_CONTROL is not set\n";
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 3)
        or die "kmock control: connect: $!\n";
    syswrite($s, "$cmd\n");
    my $sel = IO::Select->new($s);
    my $r = '';
    while ($sel->can_read(3)) {
        my $n = sysread($s, my $c, 1024);
        last unless $n;
        $r .= $c;
        last if $r =~ /\n/;
    }
    close $s;
    die "kmock control: \"$cmd\" failed: $r\n" unless $r =~ /^ok/;
    return 1;
}

sub kafka_broker_down { _kmock_ctl("down $_[0]") }
sub kafka_broker_up   { _kmock_ctl("up $_[0]") }


# --- misc ------------------------------------------------------------------

sub file_lines {
    my $path = shift;
    open my $in, '<', $path or return ();
    my @l = <$in>;
    close $in;
    return @l;
}


# --- block hooks: --- aai_before / --- aai_after ---------------------------

sub _run_hook {
    my ($block, $section) = @_;
    my $code = $block->can($section) ? $block->$section : undef;
    return unless defined $code && $code =~ /\S/;
    my $name = $block->name;
    my $ok = eval "package main; no strict; #line 1 \"$section\"\n"
                  . "$code;\n1;";
    if (!$ok) {
        Test::More::fail("$name - $section failed: $@");
    }
}

# Once the block is over (nginx stopped, so every late asynchronous line
# is written: a failed store, a failed delivery, an exit), its whole error
# log is read once more: its no_error_log patterns (a plain list) must match
# no line of it, and no worker may have crashed.
sub _recheck_log {
    my $block = shift;
    return if $block->can('must_die') && defined $block->must_die;
    my $log = _servroot() . '/logs/error.log';
    my @lines = file_lines($log) or return;
    my $name = $block->name;
    my @crash = grep { /exited on signal|AddressSanitizer/ } @lines;
    Test::More::is(scalar @crash, 0, "$name - no crash in the whole log")
        or Test::More::diag(@crash[0 .. ($#crash > 4 ? 4 : $#crash)]);
    my $no = $block->can('no_error_log') ? $block->no_error_log : undef;
    return unless defined $no && !ref $no;
    for my $pat (grep { /\S/ } split /\n/, $no) {
        my @hit = grep { index($_, $pat) >= 0 } @lines;
        Test::More::is(scalar @hit, 0,
                       "$name - \"$pat\" in no line of the whole log")
            or Test::More::diag(@hit[0 .. ($#hit > 4 ? 4 : $#hit)]);
    }
}

# Between the requests of a block (our runner only): a response the cache
# said it stores is in Redis before the next request is sent, so that a
# block expecting a hit next does not depend on the runner's pause.  Only
# for the default key and prefix; bounded (3 s); gives up silently.
sub _wait_stored {
    my ($block, $req, $res) = @_;
    return unless $res && ($res->header('Cache-Status') // '') =~ /\bstored\b/;
    my $conf = ($block->http_config // '') . ($block->config // '');
    return if $conf =~ /aai_cache_key|aai_cache_redis\s+\S+\s[^;]*\bdb=/;
    my ($method, $uri) = $req =~ /^\s*(\S+)\s+(\S+)/ or return;
    require Digest::SHA;
    my $key = 'aai:c:' . Digest::SHA::sha256_hex("http${method}localhost$uri");
    eval {
        wait_until(3, sub {
            redis_cmd('EXISTS', $key)
            || @{ redis_cmd('KEYS', "$key:*") } > 1
        });
    };
}

sub import {
    my $pkg = shift;
    if (Test::Nginx::Socket->can('add_test_cleanup_handler')
        && !$AaiTest::HooksInstalled++)
    {
        Test::Nginx::Socket::add_block_preprocessor(sub {
            _run_hook($_[0], 'aai_before');
        });
        Test::Nginx::Socket::add_test_cleanup_handler(sub {
            _run_hook($_[0], 'aai_after');
            _recheck_log($_[0]) unless $AaiTest::NoLogRecheck;
        });
        no warnings 'once';
        push @Test::Nginx::Socket::AfterRequestHandlers, \&_wait_stored;
    }
    our @ISA = ('Exporter') unless @ISA;
    $pkg->export_to_level(1, $pkg, @_);
}

# a killed run still runs END blocks (ours and the runner's, which stop
# nginx); our runner installs the same handlers, the real one does not
for my $sig (qw( INT TERM HUP )) {
    next if ref $SIG{$sig};
    $SIG{$sig} = sub {
        $SIG{PIPE} = 'IGNORE';
        warn "$0: caught SIG$sig, stopping\n";
        exit 1;
    };
}

END {
    return unless $$ == $Parent;
    local $?;
    for my $prefix (keys %Instances) {
        _stop_instance($prefix);
    }
    for my $port (keys %RedisProcs) {
        stop_redis($port);
    }
    close $_ for @Listeners;
}

# --- Kafka events and metrics (ngx_http_aai_kafka_module tests) -----------
#
#   kafka_events($topic, $count, $timeout, \&match)
#                               waits (bounded, default 10 s) until $count
#                               messages of $topic for which match->($msg)
#                               is true (default: all) have arrived; returns
#                               those (all of them, may be more than $count),
#                               each a kafka_consume() hash plus
#                               {event} = the payload decoded as strict
#                               UTF-8 JSON, or undef with {error} set.
#   metrics_get($port [, $path])
#                               the aai_metrics endpoint (default /metrics)
#                               as a hash 'family{labels}' => number.
#   metrics_wait($port, $path, \&cond, $timeout)
#                               polls metrics_get until cond->(\%metrics) is
#                               true or $timeout s (default 10) passed;
#                               returns the last hash.
#   kafka_all_brokers_up()      brings brokers 1..3 up (idempotent cleanup).

push @EXPORT, qw( kafka_events metrics_get metrics_wait
    kafka_all_brokers_up );

sub _kafka_decode {
    my $m = shift;
    require Encode;
    my $bytes = $m->{payload} // '';
    my $chars = eval {
        Encode::decode('UTF-8', "$bytes", Encode::FB_CROAK());
    };
    if (!defined $chars) {
        $m->{error} = "payload is not valid UTF-8: $@";
        return $m;
    }
    $m->{event} = eval { JSON::PP->new->decode($chars) };
    $m->{error} = "payload is not JSON: $@" unless defined $m->{event};
    return $m;
}

sub kafka_events {
    my ($topic, $count, $timeout, $match) = @_;
    $timeout //= 10;
    $match ||= sub { 1 };
    my $deadline = time + $timeout;
    my @got;
    while (1) {
        my $left = $deadline - time;
        $left = 1 if $left < 1;
        @got = grep { $match->($_) }
               map { _kafka_decode($_) } kafka_consume($topic, undef, $left);
        last if defined $count && @got >= $count;
        last if time >= $deadline;
        sleep 0.2;
    }
    return @got;
}

sub metrics_get {
    my ($port, $path) = @_;
    my ($st, undef, $body) = http_get($port, $path // '/metrics');
    my %m;
    return \%m unless defined $st && $st == 200;
    for my $l (split /\n/, $body) {
        next if $l =~ /^#/;
        $m{$1} = $2 + 0 if $l =~ /^(\S+)\s+(\S+)$/;
    }
    return \%m;
}

sub metrics_wait {
    my ($port, $path, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my $m;
    while (1) {
        $m = metrics_get($port, $path);
        last if $cond->($m) || time >= $deadline;
        sleep 0.1;
    }
    return $m;
}

sub kafka_all_brokers_up {
    eval { kafka_broker_up($_) } for 1 .. 3;
    return 1;
}

# --- Kafka outages, binary upgrades (t/044, t/045) -------------------------
#
#   kafka_all_brokers_down()    takes brokers 1..3 down (bring them up in
#                               the block's --- aai_after).
#   kafka_event_numbers($topic, $count [, $timeout])
#                               waits (default 15 s) for $count events of
#                               $topic; returns (the distinct values of
#                               their member "n", sorted and joined by ",";
#                               how many events arrived in all).
#   upgrade_instance($prefix [, $secs])
#                               the binary upgrade nginx documents, first
#                               step: USR2 to the master of an instance of
#                               start_nginx_instance, then waits (default
#                               10 s) for the new master and its workers;
#                               the instance's stop now stops the new one.
#                               Returns ($new_master, $old_master): QUIT
#                               the old one yourself.

push @EXPORT, qw( kafka_all_brokers_down kafka_event_numbers
    upgrade_instance );

sub kafka_all_brokers_down {
    kafka_broker_down($_) for 1 .. 3;
    return 1;
}

sub kafka_event_numbers {
    my ($topic, $count, $timeout) = @_;
    my @e = kafka_events($topic, $count, $timeout // 15);
    my %seen;
    $seen{ $_->{event}{n} // 'undef' }++ for @e;
    return (join(',', sort { $a <=> $b } keys %seen), scalar @e);
}

sub upgrade_instance {
    my ($prefix, $secs) = @_;
    my $old = $Instances{$prefix}
        or die "upgrade_instance: no instance at \"$prefix\"\n";
    kill 'USR2', $old or die "upgrade_instance: kill USR2 $old: $!\n";
    my $new;
    my $deadline = time + ($secs // 10);
    while (time < $deadline) {
        my ($l) = file_lines("$prefix/logs/nginx.pid");
        if (-e "$prefix/logs/nginx.pid.oldbin" && defined $l
            && $l =~ /^(\d+)/ && $1 != $old)
        {
            $new = $1;
            last if grep { _alive($_) } _children($new);
        }
        sleep 0.05;
    }
    die "upgrade_instance: no new master with workers after USR2\n"
        unless $new && grep { _alive($_) } _children($new);
    $Instances{$prefix} = $new;
    return ($new, $old);
}


# --- shared helpers, on request: use AaiTest qw( :DEFAULT :util ); -------
#
#   wait_until($secs, \&cond [, $every])
#                               polls cond every $every s (default 0.02)
#                               until true or $secs passed; returns its
#                               last value.
#   timed_get($port, $path [, \%headers, $method, $body])
#                               http_get plus the seconds it took:
#                               ($status, \%headers, $body, $secs).
#   log_problems($log [, $re])  lines of an error log that show an alert, a
#                               crit, an emerg or a crashed worker (or match
#                               $re); no_log_problems($log, $name) asserts
#                               there are none.
#   master_pid([$prefix])       the pid in "$prefix/logs/nginx.pid" (default:
#                               the runner's nginx).
#   worker_pids($master)        its live worker processes (not shutting
#                               down), sorted.
#   hup_wait($prefix, $secs)    HUP the master, then waits until every old
#                               worker exited and new ones run; returns the
#                               new worker pids (empty on timeout).
#   redis_time_us([$port])      Redis TIME in microseconds.
#   window_margin($w_us, $secs [, $port])
#                               waits (polling Redis TIME) until at least
#                               $secs remain in the current fixed window of
#                               $w_us (windows start at multiples of it, as
#                               algorithm=counter's do); returns its start.
#   redis_monitor(\&code [, $port])
#                               runs code while a MONITOR connection
#                               watches Redis; returns the commands others
#                               sent meanwhile (not this process's
#                               redis_cmd ones), each a hash {client =>
#                               "127.0.0.1:N" or "lua", args => [...]},
#                               in order.  Exact: reads up to a marker.
#   nginx_t($conf_text)         runs "nginx -t" on a configuration (the
#                               text of http { }, with TEST_NGINX_* expanded
#                               as in start_nginx_instance); returns
#                               ($exit_code, $output).
#   stop_continue(\@pids, \&code)
#                               SIGSTOPs the processes, runs code, SIGCONTs
#                               them (also when code dies): what code sends
#                               meanwhile reaches them in one go.
#   wait_redis_key($key [, $secs, $port])
#                               polls until the key exists (default 5 s);
#                               true if it does.

our @EXPORT_OK = qw( wait_until timed_get log_problems no_log_problems
    master_pid worker_pids hup_wait redis_time_us window_margin
    redis_monitor nginx_t stop_continue wait_redis_key );
our %EXPORT_TAGS = (util => [@EXPORT_OK]);

sub wait_until {
    my ($secs, $cond, $every) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        sleep $every // 0.02;
    }
    return $cond->();
}

sub timed_get {
    my ($port, @rest) = @_;
    my $t0 = time;
    my ($st, $h, $body) = http_get($port, @rest);
    return ($st, $h, $body, time - $t0);
}

sub log_problems {
    my ($log, $re) = @_;
    $re //= qr/\[(?:alert|crit|emerg)\]|exited on signal|AddressSanitizer/;
    return grep { /$re/ } file_lines($log);
}

sub no_log_problems {
    my ($log, $name) = @_;
    my @bad = log_problems($log);
    Test::More::is(scalar @bad, 0, $name // "no alert, no crash in $log")
        or Test::More::diag(@bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
}

sub master_pid {
    my $prefix = shift // _servroot();
    my ($l) = file_lines("$prefix/logs/nginx.pid");
    return defined $l && $l =~ /^(\d+)/ ? $1 : undef;
}

sub worker_pids {
    my $master = shift;
    my @w;
    for my $p (_children($master)) {
        next unless _alive($p);
        my ($cmd) = file_lines("/proc/$p/cmdline");
        next unless defined $cmd;
        $cmd =~ s/\0+$//;
        push @w, $p if $cmd =~ /worker process/ && $cmd !~ /shutting down/;
    }
    return sort { $a <=> $b } @w;
}

sub hup_wait {
    my ($prefix, $secs) = @_;
    my $master = master_pid($prefix) or return ();
    my %old = map { $_ => 1 } worker_pids($master);
    kill 'HUP', $master or return ();
    my @new;

    # as many new workers as old ones: a worker just forked still has the
    # master's title for a moment, and is not counted until it names itself
    wait_until($secs // 10, sub {
        return 0 if grep { _alive($_) } keys %old;
        @new = worker_pids($master);
        return @new >= keys %old;
    }) or return @new;
    return @new;
}

sub redis_time_us {
    my $port = shift // $ENV{TEST_NGINX_REDIS_PORT};
    my $t = redis_cmd_port($port, 'TIME');
    return $t->[0] * 1000000 + $t->[1];
}

sub window_margin {
    my ($w, $secs, $port) = @_;
    # a margin the window cannot hold would never come
    die "window_margin: $secs s of a window of $w us\n"
        if $secs * 1e6 >= $w;
    while (1) {
        my $now = redis_time_us($port);
        my $start = int($now / $w) * $w;
        return $start if $start + $w - $now > $secs * 1e6;
        select(undef, undef, undef, 0.1);
    }
}

# an algorithm=counter key (three big-endian 64-bit integers: the window's
# start in us, its count, the previous window's count) as the text
# "c<start>:<count>:<previous>"; a value of another length as it is
push @EXPORT, qw( rl_counter );

sub rl_counter {
    my ($key, $port) = @_;
    my $v = redis_cmd_port($port // $ENV{TEST_NGINX_REDIS_PORT}, 'GET', $key);
    return $v unless defined $v && length $v == 24;
    return sprintf('c%d:%d:%d', unpack('q>3', $v));
}

sub _monitor_args {
    my $s = shift;
    my @a;
    while ($s =~ /\G\s*"((?:[^"\\]|\\.)*)"/gc) {
        my $v = $1;
        $v =~ s/\\(x[0-9a-fA-F]{2}|.)/
            my $e = $1;
            $e =~ m{^x} ? chr(hex substr($e, 1))
            : $e eq 'n' ? "\n" : $e eq 'r' ? "\r" : $e eq 't' ? "\t"
            : $e eq 'a' ? "\a" : $e eq 'b' ? "\b" : $e/ge;
        push @a, $v;
    }
    return \@a;
}

sub redis_monitor {
    my ($code, $port) = @_;
    $port //= $ENV{TEST_NGINX_REDIS_PORT};
    my $m = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => $RedisTimeout)
        or die "redis_monitor: connect: $!\n";
    syswrite($m, _resp_encode('MONITOR'));
    my $buf = '';
    my $deadline = time + $RedisTimeout;
    my $ok = _read_line($m, \$buf, $deadline);
    die "redis_monitor: MONITOR: $ok\n" unless $ok eq '+OK';

    # this process's own connection to that redis is left out
    redis_cmd_port($port, 'PING');
    my $self = $RedisConn{$port}->sockport;

    my $err;
    eval { $code->(); 1 } or $err = $@;

    my $mark = "aai-monitor-mark-$$-" . int(rand(1e9));
    redis_cmd_port($port, 'ECHO', $mark);
    my @cmds;
    $deadline = time + 10;
    while (1) {
        my $l = _read_line($m, \$buf, $deadline);
        next unless $l =~ /^\+\S+ \[\d+ (\S+?)\] (.*)$/;
        my ($client, $rest) = ($1, $2);
        my $args = _monitor_args($rest);
        last if @$args == 2 && $args->[1] eq $mark;
        next if $client =~ /:(\d+)$/ && $1 == $self;
        push @cmds, { client => $client, args => $args };
    }
    close $m;
    die $err if defined $err;
    return @cmds;
}

sub nginx_t {
    my ($http_conf, %o) = @_;
    my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
    my $prefix = _servroot() . "-nginx-t";
    remove_tree($prefix);
    make_path("$prefix/logs", "$prefix/conf");
    my $mods = join '', map { "load_module $_;\n" } grep { $_ }
               split /\s+/, ($ENV{TEST_NGINX_LOAD_MODULES} || '');
    my $http = _expand($http_conf // '', free_port());
    my $main = _expand($o{main_config} // '', 0);
    open my $out, '>', "$prefix/conf/nginx.conf"
        or die "nginx_t: $!\n";
    print $out "${mods}error_log $prefix/logs/error.log;\n"
             . "pid $prefix/logs/nginx.pid;\n$main\n"
             . "events { worker_connections 64; }\n"
             . "http {\n$http\n}\n";
    close $out;
    my $cmd = join ' ', map { "'$_'" } $bin, '-t', '-q', '-p', "$prefix/",
              '-c', "$prefix/conf/nginx.conf", '-e', "$prefix/logs/error.log";
    # under "make asan" the modules need the runtime preloaded
    local $ENV{LD_PRELOAD} = $ENV{AAI_ASAN} if $ENV{AAI_ASAN};
    local $ENV{ASAN_OPTIONS} = "detect_leaks=0:log_path=$prefix-asan"
        if $ENV{AAI_ASAN};
    my $output = `$cmd 2>&1`;
    my $rc = $? >> 8;
    remove_tree($prefix);
    for my $f (glob("$prefix-asan*")) {
        Test::More::fail("nginx -t: AddressSanitizer report $f");
        Test::More::diag(join '', file_lines($f));
    }
    return ($rc, $output);
}

sub stop_continue {
    my ($pids, $code) = @_;
    kill 'STOP', @$pids;
    my @r;
    my $ok = eval { @r = $code->(); 1 };
    my $err = $@;
    kill 'CONT', @$pids;
    die $err unless $ok;
    return wantarray ? @r : $r[0];
}

sub wait_redis_key {
    my ($key, $secs, $port) = @_;
    $port //= $ENV{TEST_NGINX_REDIS_PORT};
    return wait_until($secs // 5,
                      sub { redis_cmd_port($port, 'EXISTS', $key) });
}



# --- more shared helpers (issue 17), on request: :util -----------------
#
#   spawn(\@argv, %o)           a process of the test (a redis-server of
#                               its own, a sentinel): stdin /dev/null,
#                               stdout and stderr to o{log} (default
#                               /dev/null); SIGKILLed at END if still
#                               running.  Returns its pid.
#   spawn(\&code, %o)           the same for a forked Perl helper (a
#                               stand-in DNS server or sentinel): the child
#                               runs code, then exits (no END blocks).
#   stop_pid($pid [, $sig])     sends $sig (default TERM) to a child
#                               process, waits for it (5 s), then KILL.
#   log_like($log, $re, $name [, $secs])
#                               polls a log (default 3 s) until a line
#                               matches; one check.
#   conf_error_like($http_conf, $re, $name)
#                               an nginx of that configuration fails to
#                               start with an error matching $re; one
#                               check.
#   kafka_metric(\%m, $name)    one Kafka counter of metrics_get: "depth"
#                               the queue depth, spool_bytes and
#                               spool_oldest_seconds their gauges, another
#                               spool_* the dropped_total reason, else
#                               aai_kafka_events_total of that outcome.
#   kafka_counts(\%m, @names)   "name=value ..." of those.
#   kafka_counts_are($port, \@names, $want, $name [, $timeout])
#                               polls /metrics until kafka_counts reads
#                               $want (default 15 s); one check; returns
#                               the last metrics.
#   kafka_numbers($topic, $count [, $timeout])
#                               the member "n" of the events of a topic
#                               (waits for $count, default 10 s), sorted,
#                               joined by "," (duplicates kept); with
#                               check_json => 1 after them, one check that
#                               every event is valid JSON.
#   answered_ok($port, $fmt, \@n, %o)
#                               GET sprintf($fmt, N) for each N: one check
#                               that each answered o{status} (default 204)
#                               and, with o{within} => secs, one that none
#                               took that long.
#   start_origin(\%routes, %o)  an origin server of the test (forked):
#                               route->(method, target, head) of the
#                               request's path returns (status, [headers],
#                               body); a 304 goes without a body.  Each
#                               request is logged to o{log} as "METHOD
#                               TARGET inm=... ims=..." before the answer.
#                               o{args} => sub (method, target, head,
#                               If-None-Match, If-Modified-Since) returning
#                               the route's arguments instead.  Returns
#                               ($port, $pid); stopped at END.
#   cache_front($name, $origin_port [, $extra])
#                               start_nginx_instance of one location
#                               cached in the harness Redis (X-Status is
#                               $aai_cache_status; $extra in the location)
#                               in front of that origin.
#   cache_entry_keys()          how many aai:c:* keys the harness Redis has
#                               (entries, vary records, variant sets; not
#                               stampede locks).
#   wait_cache_entries($n [, $secs])
#                               polls until there are $n (default 5 s), as
#                               an entry is stored after its response has
#                               gone; returns how many there are.
#   logs_once_more(%o)          the end-of-file check: the error log of
#                               every nginx start_nginx_instance started in
#                               this file (read when it was stopped, or
#                               now) has no alert, crit, emerg, crash or
#                               sanitizer report; o{allow} => [qr//, ...]
#                               lines that are expected.  One check, none
#                               when the file started no extra nginx (the
#                               runner's log is read again after each
#                               block).

push @EXPORT_OK, qw( spawn stop_pid log_like conf_error_like kafka_metric
    kafka_counts kafka_counts_are kafka_numbers answered_ok start_origin
    cache_front cache_entry_keys wait_cache_entries logs_once_more );
push @{ $EXPORT_TAGS{util} }, qw( spawn stop_pid log_like conf_error_like
    kafka_metric kafka_counts kafka_counts_are kafka_numbers answered_ok
    start_origin cache_front cache_entry_keys wait_cache_entries
    logs_once_more );

my %Spawned;         # pid => 1

sub spawn {
    my ($argv, %o) = @_;
    my $pid = fork();
    die "spawn: fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw( TERM INT HUP );
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $o{log} // '/dev/null';
        open STDERR, '>&', \*STDOUT;
        if (ref $argv eq 'CODE') {
            %Spawned = ();
            eval { $argv->(); 1 } or print STDERR $@;
            POSIX::_exit(0);
        }
        { no warnings 'exec'; exec @$argv; }
        POSIX::_exit(127);
    }
    $Spawned{$pid} = 1;
    return $pid;
}

sub stop_pid {
    my ($pid, $sig) = @_;
    return unless $pid;
    delete $Spawned{$pid};
    return unless kill 0, $pid;
    kill $sig // SIGTERM, $pid;
    if (!_wait_exit($pid, 5)) {
        kill SIGKILL, $pid;
        waitpid($pid, 0);
    }
}

sub log_like {
    my ($log, $re, $name, $secs) = @_;
    my @l;
    wait_until($secs // 3, sub {
        @l = grep { /$re/ } file_lines($log);
    });
    Test::More::ok(scalar @l, $name) or Test::More::diag("no line of $log "
                                                          . "matches $re");
}

sub conf_error_like {
    my ($conf, $re, $name) = @_;
    my ($port, $stop) = eval { start_nginx_instance('conf-error', $conf) };
    $stop->() if $stop;
    Test::More::like($@ // '', $re, $name);
}

sub kafka_metric {
    my ($m, $name) = @_;
    my $k = $name eq 'depth' ? 'aai_kafka_queue_depth'
          : $name =~ /^(spool_bytes|spool_oldest_seconds)$/
          ? "aai_kafka_$name"
          : $name =~ /^spool_/ ? "aai_kafka_dropped_total{reason=\"$name\"}"
          : "aai_kafka_events_total{outcome=\"$name\"}";
    return $m->{$k} // 0;
}

sub kafka_counts {
    my ($m, @names) = @_;
    return join ' ', map { "$_=" . kafka_metric($m, $_) } @names;
}

sub kafka_counts_are {
    my ($port, $names, $want, $name, $timeout) = @_;
    my $m = metrics_wait($port, '/metrics',
                         sub { kafka_counts($_[0], @$names) eq $want },
                         $timeout // 15);
    Test::More::is(kafka_counts($m, @$names), $want, $name);
    return $m;
}

sub kafka_numbers {
    my ($topic, $count, $timeout, %o) = @_;
    my @e = kafka_events($topic, $count, $timeout // 10);
    if ($o{check_json}) {
        my @bad = grep { !defined $_->{event} } @e;
        Test::More::is(scalar @bad, 0, "$topic: every event is valid JSON")
            or Test::More::diag($bad[0]{error});
    }
    return join ',', sort { $a <=> $b }
                     map { $_->{event}{n} // 'undef' } @e;
}

sub answered_ok {
    my ($port, $fmt, $ns, %o) = @_;
    my $want = $o{status} // 204;
    my (@bad, $worst, $slowest);
    $worst = 0;
    for my $n (@$ns) {
        my $path = sprintf $fmt, $n;
        my $t0 = time;
        my ($st) = http_get($port, $path);
        my $dt = time - $t0;
        push @bad, "$path: " . ($st // 'no answer') unless ($st // 0) == $want;
        ($worst, $slowest) = ($dt, $path) if $dt > $worst;
    }
    my $what = @$ns == 1 ? sprintf($fmt, $ns->[0])
             : scalar(@$ns) . ' requests';
    Test::More::is(join(', ', @bad), '', "$what answered $want");
    if (defined $o{within}) {
        Test::More::cmp_ok($worst, '<', $o{within},
                           "$what each within $o{within} s")
            or Test::More::diag("$slowest took $worst s");
    }
}

my @Origins;         # pids of start_origin

sub start_origin {
    my ($routes, %o) = @_;
    my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "origin: listen: $!\n";
    my $port = $l->sockport;
    my $pid = fork // die "origin: fork: $!\n";
    if ($pid) {
        close $l;
        push @Origins, $pid;
        return ($port, $pid);
    }
    # not the test's handlers, nor its output (prove waits for that)
    $SIG{$_} = 'DEFAULT' for qw( TERM INT HUP );
    open STDOUT, '>', '/dev/null';
    open STDERR, '>', '/dev/null';
    my $end = time + 300;
    while (time < $end) {
        my $c = $l->accept or next;
        my $head = '';
        while ($head !~ /\r\n\r\n/) {
            my $n = sysread($c, $head, 4096, length $head);
            last unless $n;
        }
        my ($method, $target) = $head =~ m{^(\S+) (\S+)};
        next unless defined $target;
        if ($head =~ /^Content-Length:\s*(\d+)/mi) {
            my $want = $1 - (length($head) - index($head, "\r\n\r\n") - 4);
            while ($want > 0) {
                my $n = sysread($c, my $b, $want);
                last unless $n;
                $want -= $n;
            }
        }
        my ($path) = $target =~ m{^([^?]*)};
        my ($inm) = $head =~ /^If-None-Match:\s*(.*?)\r$/mi;
        my ($ims) = $head =~ /^If-Modified-Since:\s*(.*?)\r$/mi;
        my $route = $routes->{$path} || sub { (404, [], "no route\n") };
        my @args = $o{args} ? $o{args}->($method, $target, $head, $inm, $ims)
                            : ($method, $target, $head);
        my ($status, $hdrs, $body) = $route->(@args);
        my $out = "HTTP/1.1 $status X\r\n";
        my @h = @$hdrs;
        while (my ($k, $v) = splice(@h, 0, 2)) {
            $out .= "$k: $v\r\n";
        }
        $out .= "Content-Length: " . length($body) . "\r\n"
                if $status != 304;
        $out .= "Connection: close\r\n\r\n";
        $out .= $body if $status != 304;
        # logged before the answer, so that the client finds it there
        if (defined $o{log} && open my $log, '>>', $o{log}) {
            printf $log "%s %s inm=%s ims=%s\n", $method, $target,
                   $inm // '-', $ims // '-';
            close $log;
        }
        syswrite($c, $out);
        close $c;
    }
    POSIX::_exit(0);
}

sub cache_front {
    my ($name, $origin_port, $extra) = @_;
    $extra //= '';
    return start_nginx_instance($name, <<"_EOC_");
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / {
            aai_cache on;
            $extra
            add_header X-Status \$aai_cache_status;
            proxy_pass http://127.0.0.1:$origin_port;
        }
    }
_EOC_
}

sub cache_entry_keys {
    return scalar grep { !/:l$/ } @{ redis_cmd('KEYS', 'aai:c:*') };
}

sub wait_cache_entries {
    my ($want, $secs) = @_;
    wait_until($secs // 5, sub { cache_entry_keys() >= $want });
    return cache_entry_keys();
}

my %LogProblems;     # prefix => [lines], of the stopped instances

# called as an instance stops: what its log shows is kept for the end of
# the file (the prefix is removed when a next instance takes its name)
sub _keep_log_problems {
    my $prefix = shift;
    push @{ $LogProblems{$prefix} }, log_problems("$prefix/logs/error.log");
}

sub logs_once_more {
    my %o = @_;
    my %logs = map { $_ => [@{ $LogProblems{$_} }] } keys %LogProblems;
    push @{ $logs{$_} }, log_problems("$_/logs/error.log")
        for keys %Instances;
    # none started: the runner's log was read again after each block
    return unless %logs;
    my @allow = @{ $o{allow} || [] };
    my @bad;
    for my $prefix (sort keys %logs) {
        (my $name = $prefix) =~ s{.*/}{};
        for my $l (@{ $logs{$prefix} }) {
            next if grep { $l =~ $_ } @allow;
            push @bad, "$name: $l";
        }
    }
    my $n = keys %logs;
    Test::More::is(scalar @bad, 0, "end of the file: no alert, no crash in "
                   . "the error logs of its $n extra nginx")
        or Test::More::diag(@bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
}

# --- certificates for the TLS tests (t/012, t/019), on request: :util ------
#
#   tls_ca($dir, $name)         a self-signed CA: $dir/$name.crt, .key
#   tls_cert($dir, $name, $ca, $days, $ext)
#                               a certificate signed by $ca, valid $days
#                               days (negative: expired), with the openssl
#                               extension line $ext: $dir/$name.crt, .key

push @EXPORT_OK, qw( tls_ca tls_cert );
push @{ $EXPORT_TAGS{util} }, qw( tls_ca tls_cert );

sub _openssl {
    my @args = @_;
    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        { no warnings 'exec'; exec 'openssl', @args; }
        POSIX::_exit(127);
    }
    waitpid($pid, 0);
    die "openssl @args failed\n" if $?;
}

sub tls_ca {
    my ($d, $name) = @_;
    _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', "$d/$name.key", '-out', "$d/$name.crt",
             '-days', '2', '-subj', "/CN=aai test $name");
}

sub tls_cert {
    my ($d, $name, $ca, $days, $ext) = @_;
    open my $f, '>', "$d/$name.ext" or die "$d/$name.ext: $!\n";
    print $f "$ext\n";
    close $f;
    _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout',
             "$d/$name.key", '-out', "$d/$name.csr", '-subj', "/CN=$name");
    _openssl('x509', '-req', '-in', "$d/$name.csr", '-CA', "$d/$ca.crt",
             '-CAkey', "$d/$ca.key", '-CAcreateserial', '-days', $days,
             '-extfile', "$d/$name.ext", '-out', "$d/$name.crt");
}

# --- Redis and client failure scenarios (issue 17), on request: :util ------
#
# A Redis that never answers is hung_listener() (nothing ever connects
# through); one that stops answering a connection nginx already holds is
# with_paused_redis() (CLIENT PAUSE) or, for a redis-server of the test's
# own, stop_continue([$pid], ...) (SIGSTOP).
#
#   with_paused_redis($port, $ms, \&code, %o)
#                               CLIENT PAUSE $ms o{mode} (default ALL, or
#                               WRITE: reads and PING still answered) on
#                               that Redis, then runs code and returns what
#                               it returns.  The pause ends by itself after
#                               $ms; with mode WRITE, o{unpause} => 1 sends
#                               CLIENT UNPAUSE once code has run, and a die
#                               of code sends it before it goes on (under
#                               ALL, Redis 7.0 holds this client's UNPAUSE
#                               too until the pause ends: none is sent).
#   restart_redis($port [, \&while_down])
#                               stops a Redis of start_redis, runs
#                               while_down (what is checked with Redis
#                               down), then starts an empty one on the same
#                               port (the old one's scripts and keys gone);
#                               returns what while_down returned.
#   client_gone_get($port, $path, $log [, $secs])
#                               a client that goes away: sends "GET $path"
#                               on its own connection, closes it 0.1 s later
#                               unanswered, then polls $log (default 3 s)
#                               for nginx's "client prematurely closed
#                               connection"; true once it is there.

push @EXPORT_OK, qw( with_paused_redis restart_redis client_gone_get );
push @{ $EXPORT_TAGS{util} }, qw( with_paused_redis restart_redis
    client_gone_get );

sub with_paused_redis {
    my ($port, $ms, $code, %o) = @_;
    my $mode = uc($o{mode} // 'ALL');
    die "with_paused_redis: unpause => 1 needs mode => 'WRITE'\n"
        if $o{unpause} && $mode ne 'WRITE';
    redis_cmd_port($port, 'CLIENT', 'PAUSE', $ms, $mode);
    my @r;
    my $ok = eval { @r = $code->(); 1 };
    my $err = $@;
    if ($mode eq 'WRITE' && ($o{unpause} || !$ok)) {
        # a failed UNPAUSE is the error unless code's is
        my $un = eval { redis_cmd_port($port, 'CLIENT', 'UNPAUSE'); 1 };
        ($ok, $err) = (0, $@) if $ok && !$un;
    }
    die $err unless $ok;
    return wantarray ? @r : $r[0];
}

sub restart_redis {
    my ($port, $while_down) = @_;
    die "restart_redis: no redis of start_redis on $port\n"
        unless $RedisProcs{$port};
    stop_redis($port);
    my @r;
    my $ok = eval { @r = $while_down->() if $while_down; 1 };
    my $err = $@;
    start_redis(port => $port);
    die $err unless $ok;
    return wantarray ? @r : $r[0];
}

sub client_gone_get {
    my ($port, $path, $log, $secs) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 2)
        or die "client_gone_get: connect: $!\n";
    syswrite($s, "GET $path HTTP/1.1\r\nHost: x\r\n\r\n");
    sleep 0.1;
    close $s;
    return wait_until($secs // 3, sub {
        scalar grep { /client prematurely closed connection/ }
               file_lines($log);
    });
}

END {
    return unless $$ == $Parent;
    local $?;
    kill 'TERM', @Origins if @Origins;
    for my $pid (keys %Spawned) {
        kill SIGKILL, $pid;
        waitpid($pid, 0);
    }
}

1;
