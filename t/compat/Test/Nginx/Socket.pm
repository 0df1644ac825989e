package Test::Nginx::Socket;

# aai-nginx: a small re-implementation of the part of OpenResty's
# Test::Nginx::Socket that our .t files use, written from its documented
# behaviour.  The .t files must run unchanged under the real module too, so
# this one follows the real semantics where they matter for pass/fail:
#
#   - blocks come from Test::Base (same block syntax and filters: eval,
#     chomp, ...), shuffled unless no_shuffle() or TEST_NGINX_NO_SHUFFLE;
#   - every block writes servroot/conf/nginx.conf (daemon on, master_process
#     off unless master_on(), error_log level debug unless log_level()),
#     starts a fresh nginx, runs the request(s) repeat_each() times;
#   - one request per connection ("Connection: close"); "request eval"
#     giving an array means several requests in sequence, and then
#     error_code, response_body, response_headers ... must be arrays too;
#   - error_log / no_error_log are checked after EVERY request of a block
#     against the error.log lines written since the previous check (the
#     first check also sees the startup lines);
#   - "!Name" in response_headers is matched case-sensitively against the
#     raw header lines;
#   - $TEST_NGINX_* is expanded in main_config, http_config, config,
#     post_main_config, user_files, pipelined_requests and response_body,
#     not in request or more_headers; an unset one aborts (BAIL_OUT).
#
# Stricter than the real one (a test passing here still passes there):
# a block fails when nginx crashed ("exited on signal" in error.log, or the
# process is gone at the end of the block), and, with AAI_ASAN=<libasan.so>
# in the environment, when AddressSanitizer wrote a report.
#
# Not implemented: HUP reloads, valgrind/stap/check-leak/benchmark modes,
# HTTP/2 and HTTP/3, tcp_listen/udp_listen mock servers, request packets
# split at arbitrary points (array packets are joined), access_log checks.

use strict;
use warnings;

use Test::Base -base;
use Test::LongString ();
use Time::HiRes qw( sleep time );
use POSIX qw( :sys_wait_h SIGQUIT SIGKILL SIGTERM );
use IO::Socket::INET ();
use IO::Select ();
use File::Path qw( make_path remove_tree );
use File::Spec ();
use List::Util qw( shuffle );
use HTTP::Response ();
use Errno qw( EAGAIN EWOULDBLOCK EINTR );
use Digest::MD5 ();
use Digest::SHA ();

our $VERSION = '0.33';

# aai-nginx extension, not in the real runner: called between the requests
# of a block with ($block, $request_text, $http_response)
our @AfterRequestHandlers;

our @EXPORT = qw( env_to_nginx is_str plan run_tests run_test
    repeat_each config_preamble worker_connections master_process_enabled
    no_long_string workers master_on master_off log_level no_shuffle
    no_root_location use_hup server_name server_addr server_root html_dir
    server_port server_port_for_client timeout no_nginx_manager
    check_accum_error_log add_block_preprocessor bail_out
    add_test_cleanup_handler add_cleanup_handler add_response_body_check
    set_http_config_filter );


# settings (names and defaults as in the real module)

our $NginxBinary   = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $ServerPort    = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT}
                     || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $ServerAddr    = '127.0.0.1';
our $ServerName    = 'localhost';
our $Workers       = 1;
our $WorkerConnections = 64;
our $LogLevel      = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $RepeatEach    = 1;
our $NoShuffle     = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $NoLongString;
our $NoRootLocation = 0;
our $Timeout       = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $TestNginxSleep = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $LoadModules   = $ENV{TEST_NGINX_LOAD_MODULES};
our $CheckAccumErrLog = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $Verbose       = $ENV{TEST_NGINX_VERBOSE};
our $ConfigPreamble = '';
our $FilterHttpConfig;
our $WorkerUser    = $ENV{TEST_NGINX_WORKER_USER};
our $AsanLib       = $ENV{AAI_ASAN};

our $ServRoot = $ENV{TEST_NGINX_SERVROOT}
                || File::Spec->rel2abs('t/servroot');
$ServRoot = File::Spec->rel2abs($ServRoot);
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";
our $CacheDir   = "$ServRoot/cache";

our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers,
     @TestCleanupHandlers, @ResponseBodyChecks);
our $ErrLogFilePos = 0;
our $RandPorts = {};
our $PrevConfig;
our $NginxPid;            # pid of the nginx we started (master or single)
# reports left by earlier runs or earlier .t files were reported there
our %AsanSeen = map { $_ => 1 } glob("$ServRoot/asan*");
our $TotalConnectFailures = 0;
our $InSubprocess;


# the exported configuration functions

sub env_to_nginx {
    for my $v (@_) {
        if ($v !~ /^[A-Za-z_]/ || $v =~ /\n/) {
            Carp::croak("env_to_nginx: bad argument value: $v");
        }
        push @EnvToNginx, $v;
    }
}

sub is_str {
    my ($got, $expected, $desc) = @_;
    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }
    return Test::More::is($got, $expected, $desc);
}

sub repeat_each        { $RepeatEach = shift if @_; $RepeatEach }
sub worker_connections { $WorkerConnections = shift if @_;
                         $WorkerConnections }
sub workers            { $Workers = shift if @_; $Workers }
sub log_level          { $LogLevel = shift if @_; $LogLevel }
sub master_on          { $MasterProcessEnabled = 'on' }
sub master_off         { $MasterProcessEnabled = 'off' }
sub master_process_enabled {
    $MasterProcessEnabled = (shift() ? 'on' : 'off') if @_;
    $MasterProcessEnabled;
}
sub no_long_string     { $NoLongString = 1 }
sub no_shuffle         { $NoShuffle = 1 }
sub no_root_location   { $NoRootLocation = 1 }
sub use_hup            { }
sub no_nginx_manager   { }
sub check_accum_error_log { $CheckAccumErrLog = 1 }
sub config_preamble    { $ConfigPreamble = shift }
sub server_name        { $ServerName = shift if @_; $ServerName }
sub server_addr        { $ServerAddr = shift if @_; $ServerAddr }
sub server_root        { $ServRoot }
sub html_dir           { $HtmlDir }
sub server_port        { $ServerPort = shift if @_; $ServerPort }
sub server_port_for_client { $ServerPortForClient = shift if @_;
                             $ServerPortForClient }
sub timeout            { $Timeout = shift if @_; $Timeout }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler { unshift @CleanupHandlers, shift }
sub add_test_cleanup_handler { unshift @TestCleanupHandlers, shift }
sub add_response_body_check { push @ResponseBodyChecks, shift }
sub set_http_config_filter { $FilterHttpConfig = shift }

sub bail_out {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}


# small utilities

sub parse_time {
    my $tm = shift;
    return undef unless defined $tm;
    $tm =~ s/^\s+|\s+$//g;
    if ($tm =~ s/([^_a-zA-Z])ms$/$1/) {
        $tm = $tm / 1000;
    } else {
        $tm =~ s/([^_a-zA-Z])s$/$1/;
    }
    return $tm;
}

sub trim_str {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\n/ /g;
    $s =~ s/\s{2,}/ /g;
    return $s;
}

sub fmt_str {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

sub port_is_free {
    my $port = shift;
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                  LocalPort => $port, Proto => 'tcp',
                                  ReuseAddr => 1, Listen => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub gen_rand_port {
    my $used = shift;
    for (1 .. 1000) {
        my $p = 10000 + int(rand(50000));
        next if $used->{$p};
        return $p if port_is_free($p);
    }
    return undef;
}

sub expand_env_in_text {
    my ($text, $name) = @_;
    return undef unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        my $v;
        if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
            if (!defined $RandPorts->{$var}) {
                my %used = ($ServerPort => 1,
                            map { $_ => 1 } values %$RandPorts);
                $RandPorts->{$var} = gen_rand_port(\%used)
                    // bail_out("$name - no free port for $var");
            }
            $v = $RandPorts->{$var};
        } else {
            bail_out("$name - No environment $var defined.\n")
                unless defined $ENV{$var};
            $v = $ENV{$var};
        }
        $v;
    }ge;
    return $text;
}

sub get_indexed_value {
    my ($name, $value, $idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$idx] if ref $value && ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected "
                 . "results should be arrays as well.");
    }
    return $value->[0] if ref $value && ref $value eq 'ARRAY';
    return $value;
}

sub is_running {
    my $pid = shift;
    return 0 unless $pid;
    waitpid($pid, WNOHANG);
    return 0 unless kill 0, $pid;
    # a zombie is not running
    if (open my $st, '<', "/proc/$pid/stat") {
        my $s = <$st>;
        close $st;
        return 0 if defined $s && $s =~ /^\d+ \(.*\) Z /;
    }
    return 1;
}

sub child_pids {
    my $ppid = shift;
    my @kids;
    opendir my $d, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $d) {
        open my $st, '<', "/proc/$p/stat" or next;
        my $s = <$st>;
        close $st;
        next unless defined $s && $s =~ /^\d+ \(.*\) \S+ (\d+) /;
        push @kids, $p if $1 == $ppid;
    }
    closedir $d;
    return @kids;
}

sub read_pid_file {
    my $wait = shift // 0;
    my $deadline = time + $wait;
    while (1) {
        if (open my $in, '<', $PidFile) {
            my $pid = <$in>;
            close $in;
            if (defined $pid && $pid =~ /^(\d+)/) {
                return $1;
            }
        }
        return undef if time >= $deadline;
        sleep 0.01;
    }
}

# Stop nginx: QUIT (graceful, lets modules flush), then KILL the process
# and its children if it is still there after the bound.
sub stop_nginx {
    my ($name, $pid) = @_;
    return unless $pid;
    my @kids = child_pids($pid);
    kill SIGQUIT, $pid;
    my $bound = $Timeout > 5 ? $Timeout : 5;
    my $deadline = time + $bound;
    while (time < $deadline && is_running($pid)) {
        sleep 0.02;
    }
    if (is_running($pid)) {
        warn "$name - timeout when waiting for nginx $pid to exit, "
             . "killing it\n";
        push @kids, child_pids($pid);
        kill SIGKILL, $pid;
    }
    for my $k (@kids) {
        kill SIGKILL, $k if is_running($k);
    }
    $deadline = time + 2;
    while (time < $deadline && is_running($pid)) {
        sleep 0.01;
    }
}

sub cleanup {
    for my $h (@CleanupHandlers) {
        eval { $h->() };
    }
    @CleanupHandlers = ();
    if ($NginxPid) {
        stop_nginx('cleanup', $NginxPid) unless $ENV{TEST_NGINX_NO_CLEAN};
        undef $NginxPid;
    }
}


# server root and configuration

sub setup_server_root {
    make_path($ServRoot) unless -d $ServRoot;
    remove_tree($ConfDir, $LogDir, $HtmlDir, $CacheDir,
                glob("$ServRoot/*_temp"), glob("$ServRoot/*_cache"));
    for my $d ($LogDir, $HtmlDir, $ConfDir) {
        make_path($d) or bail_out("Failed to do mkdir $d: $!");
    }
    open my $out, '>', "$HtmlDir/index.html"
        or bail_out("Can't open $HtmlDir/index.html for writing: $!");
    print $out '<html><head><title>It works!</title></head>'
               . '<body>It works!</body></html>';
    close $out;
}

sub write_user_files {
    my $block = shift;
    my $name = $block->name;
    my $files = scalar($block->user_files);
    return unless $files;

    if (!ref $files) {
        my @list;
        my ($fname, $body, $date);
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$fname, $body, $date] if defined $fname;
                ($fname, $date, $body) = ($1, $2, undef);
            } else {
                $body .= $line;
            }
        }
        push @list, [$fname, $body, $date] if defined $fname;
        $files = \@list;
    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - wrong value type for user_files: " . ref $files);
    }

    for my $f (@$files) {
        my ($fname, $body, $date) = @$f;
        $body //= '';
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        if ($path =~ m{(.*)/} && !-d $1) {
            make_path($1);
        }
        $body = expand_env_in_text($body, $name);
        open my $out, '>', $path
            or bail_out("$name - Cannot open $path for writing: $!");
        binmode $out;
        print $out $body;
        close $out;
        if ($date) {
            system("TZ=GMT touch -t '$date' '$path'");
        }
    }
}

sub write_config_file {
    my ($block, $config) = @_;
    my $name = $block->name;

    my $http_config = expand_env_in_text(scalar($block->http_config), $name) // '';
    $http_config = $FilterHttpConfig->($http_config) if $FilterHttpConfig;
    my $main_config = scalar($block->main_config) // '';
    if ($LoadModules) {
        my @mods = map { "load_module $_;" } grep { $_ } split /\s+/,
                   $LoadModules;
        $main_config = join(' ', @mods, $main_config) if @mods;
    }
    $main_config = expand_env_in_text($main_config, $name);
    my $post_main_config = expand_env_in_text(scalar($block->post_main_config),
                                              $name) // '';
    my $err_log = scalar($block->error_log_file)
                  ? expand_env_in_text(scalar($block->error_log_file), $name)
                  : $ErrLogFile;
    my $level = scalar($block->log_level) || $LogLevel;
    my $server_name = scalar($block->server_name) // $ServerName;
    (my $qname = $server_name) =~ s/\\/\\\\/g;
    $qname =~ s/'/\\'/g;

    my @temp;
    for my $t (qw(client_body proxy fastcgi scgi uwsgi)) {
        next if $http_config =~ /\b${t}_temp_path\b/;
        push @temp, "${t}_temp_path $ServRoot/${t}_temp;";
    }
    my $temp = join ' ', @temp;

    my $env = '';
    for my $v ('LD_PRELOAD', 'LD_LIBRARY_PATH', 'ASAN_OPTIONS',
               @EnvToNginx)
    {
        $env .= ($v =~ /\s/ ? "env '$v';\n" : "env $v;\n");
    }

    my $root_location = $NoRootLocation ? '' : <<"_EOC_";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_

    my $user = '';
    if (defined $WorkerUser) {
        $user = "user $WorkerUser;\n";
    } elsif ($> == 0) {
        $user = "user root;\n";
    }

    open my $out, '>', $ConfFile
        or bail_out("Can't open $ConfFile for writing: $!");
    print $out <<"_EOC_";
worker_processes  $Workers;
daemon on;
master_process $MasterProcessEnabled;
error_log $err_log $level;
pid       $PidFile;
$env
$main_config

http {
    access_log $AccLogFile; $temp

    default_type text/plain;
    keepalive_timeout  68000ms;

$http_config
    server {
        listen          $ServerPort;
        server_name     '$qname';
        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main_config

events {
    accept_mutex off;
    worker_connections  $WorkerConnections;
}
$user
_EOC_
    close $out;
}


# starting nginx

# Runs nginx (which daemonizes) and returns its exit status, or undef on a
# timeout (then it is killed).
sub run_nginx_cmd {
    my ($name) = @_;
    my $stderr = "$LogDir/stderr.log";
    my $pid = fork();
    bail_out("$name - fork() failed: $!") unless defined $pid;
    if ($pid == 0) {
        $InSubprocess = 1;
        if ($AsanLib) {
            $ENV{LD_PRELOAD} = $AsanLib
                . (defined $ENV{LD_PRELOAD} ? " $ENV{LD_PRELOAD}" : '');
            $ENV{ASAN_OPTIONS} = "detect_leaks=0:log_path=$ServRoot/asan";
        }
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', $stderr;
        { no warnings 'exec';
          exec $NginxBinary, '-p', "$ServRoot/", '-c', $ConfFile,
               '-e', $ErrLogFile; }
        POSIX::_exit(127);
    }
    my $deadline = time + ($Timeout > 10 ? $Timeout : 10);
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        sleep 0.005;
    }
    kill SIGKILL, $pid;
    waitpid($pid, 0);
    return undef;
}

sub stderr_text {
    open my $in, '<', "$LogDir/stderr.log" or return '';
    local $/;
    my $s = <$in> // '';
    close $in;
    return $s;
}

# Starts nginx for the block; returns 1 when it is up.
sub start_nginx {
    my ($block) = @_;
    my $name = $block->name;
    my $waited = 0;

    while (1) {
        my $status = run_nginx_cmd($name);
        if (defined $status && $status == 0) {
            $NginxPid = read_pid_file(2);
            if (!$NginxPid) {
                fail("$name - nginx started but wrote no pid file");
                return 0;
            }
            sleep $TestNginxSleep;
            return 1;
        }

        my $err = stderr_text();
        if ($err =~ /Address already in use/ && $waited < 5) {
            # the previous nginx (ours or a neighbour's) is still going
            sleep 0.2;
            $waited += 0.2;
            unlink "$LogDir/stderr.log";
            truncate $ErrLogFile, 0;    # keep the failed try out of checks
            next;
        }

        fail("$name - nginx failed to start ("
             . (defined $status ? "status $status" : "timed out") . ")");
        diag($err) if $err ne '';
        return 0;
    }
}


# error.log checks

sub error_log_data {
    sleep $TestNginxSleep * 3;
    open my $in, '<', $ErrLogFile or return [];
    if (!$CheckAccumErrLog && $ErrLogFilePos > 0) {
        seek $in, $ErrLogFilePos, 0;
    }
    my @lines = <$in>;
    $ErrLogFilePos = tell($in) unless $CheckAccumErrLog;
    close $in;
    return \@lines;
}

sub pattern_list {
    my $pats = shift;
    if (!ref $pats) {
        chomp $pats;
        return [split /\n+/, $pats];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ /$pat/ : index($line, $pat) >= 0;
}

sub value_contains {
    my ($val, $pat) = @_;
    return 0 unless defined $val;
    if (!ref $val || ref $val eq 'Regexp') {
        return index("$val", $pat) >= 0;
    }
    if (ref $val eq 'ARRAY') {
        for my $v (@$val) {
            return 1 if value_contains($v, $pat);
        }
    }
    return 0;
}

sub check_error_log {
    my ($block, $req_idx) = @_;
    my $name = $block->name;
    my $lines;

    my %warn_on = (alert => 1, crit => 1, emerg => 1);

    if (defined scalar($block->grep_error_log)) {
        my $gp = scalar($block->grep_error_log);
        $gp = $gp->[$req_idx] if ref $gp eq 'ARRAY';
        my $expected = scalar($block->grep_error_log_out);
        bail_out("$name - No --- grep_error_log_out defined but "
                 . "--- grep_error_log is defined") unless defined $expected;
        $expected = $expected->[$req_idx] if ref $expected eq 'ARRAY';
        $expected = expand_env_in_text($expected, $name)
            unless ref $expected;
        $lines ||= error_log_data();
        my $matched = '';
        for my $line (@$lines) {
            if ((ref $gp && $line =~ /$gp/) || $line =~ /\Q$gp\E/) {
                my $m = $&;
                $matched .= "$m\n" if $m !~ /\n/;
            }
        }
        if (ref $expected eq 'Regexp') {
            like($matched, $expected,
                 "$name - grep_error_log_out (req $req_idx)");
        } elsif ($NoLongString) {
            is($matched, $expected,
               "$name - grep_error_log_out (req $req_idx)");
        } else {
            Test::LongString::is_string($matched, $expected,
                "$name - grep_error_log_out (req $req_idx)");
        }
    }

    if (defined scalar($block->error_log)) {
        my $orig = scalar($block->error_log);
        for my $l (keys %warn_on) {
            delete $warn_on{$l} if value_contains($orig, "[$l");
        }
        my $pats = pattern_list($orig);
        $lines ||= error_log_data();
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    pass("$name - pattern \"$pat\" matches a line in "
                         . "error.log (req $req_idx)");
                    undef $pat;
                }
            }
        }
        for my $pat (@$pats) {
            next unless defined $pat;
            fail("$name - pattern \"$pat\" should match a line in "
                 . "error.log (req $req_idx)");
        }
    }

    if (defined scalar($block->no_error_log)) {
        my $orig = scalar($block->no_error_log);
        for my $l (keys %warn_on) {
            delete $warn_on{$l} if value_contains($orig, "[$l");
        }
        my $pats = pattern_list($orig);
        my %found;
        $lines ||= error_log_data();
        my $i = 0;
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    $found{$pat} = 1;
                    my $ln = fmt_str($line);
                    my $p = fmt_str("$pat");
                    my $end = $i + 10 < @$lines - 1 ? $i + 10 : @$lines - 1;
                    my $more = join '', @$lines[$i + 1 .. $end - 1];
                    fail("$name - pattern \"$p\" should not match any line "
                         . "in error.log but matches line \"$ln\" "
                         . "(req $req_idx)\n$more");
                }
            }
        } continue {
            $i++;
        }
        for my $pat (@$pats) {
            next if !defined $pat || $found{$pat};
            my $p = fmt_str("$pat");
            pass("$name - pattern \"$p\" does not match a line in "
                 . "error.log (req $req_idx)");
        }
    }

    $lines ||= error_log_data();
    for my $line (@$lines) {
        for my $l (keys %warn_on) {
            warn "WARNING: $name - " . fmt_str($line) . "\n"
                if $line =~ /\[$l\]/;
        }
        if ($line =~ /\bAssertion .*?failed\b/) {
            chomp(my $ln = $line);
            fail("$name - $ln");
        }
        # stricter than the real runner: a crashed worker fails the block
        if ($line =~ /exited on signal (\d+)/) {
            chomp(my $ln = $line);
            fail("$name - nginx process crashed: $ln");
        }
    }
}

sub check_shutdown_error_log {
    my ($block) = @_;
    my $name = $block->name;
    return unless defined scalar($block->shutdown_error_log)
                  || defined scalar($block->no_shutdown_error_log);
    my $lines = error_log_data();

    if (defined scalar($block->shutdown_error_log)) {
        my $pats = pattern_list(scalar($block->shutdown_error_log));
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    pass("$name - pattern \"$pat\" matches a line in "
                         . "error.log");
                    undef $pat;
                }
            }
        }
        for my $pat (grep { defined } @$pats) {
            fail("$name - pattern \"$pat\" should match a line in "
                 . "error.log");
        }
    }

    if (defined scalar($block->no_shutdown_error_log)) {
        my $pats = pattern_list(scalar($block->no_shutdown_error_log));
        my %found;
        for my $line (@$lines) {
            for my $pat (@$pats) {
                if (line_matches($line, $pat)) {
                    $found{$pat} = 1;
                    fail("$name - pattern \"" . fmt_str("$pat")
                         . "\" should not match any line in error.log but "
                         . "matches line \"" . fmt_str($line) . "\"");
                }
            }
        }
        for my $pat (@$pats) {
            next if $found{$pat};
            pass("$name - pattern \"" . fmt_str("$pat")
                 . "\" does not match a line in error.log");
        }
    }
}

sub check_asan {
    my ($name) = @_;
    return unless $AsanLib;
    for my $f (glob("$ServRoot/asan*")) {
        next if $AsanSeen{$f}++;
        next unless -s $f;
        open my $in, '<', $f or next;
        my @l = <$in>;
        close $in;
        my $n = @l > 60 ? 60 : scalar @l;
        fail("$name - AddressSanitizer report in $f");
        diag(join '', @l[0 .. $n - 1]);
    }
    # UndefinedBehaviorSanitizer reports go to stderr, i.e. to these logs
    # (AaiTest does the same for its own instances)
    for my $f ($ErrLogFile, "$LogDir/stderr.log") {
        open my $in, '<', $f or next;
        my @ub = grep { /: runtime error: / } <$in>;
        close $in;
        next unless @ub;
        fail("$name - UndefinedBehaviorSanitizer report in $f");
        diag(join '', @ub[0 .. ($#ub < 9 ? $#ub : 9)]);
    }
}


# requests

sub parse_more_headers {
    my ($in) = @_;
    my ($out, $chunked) = ('', 0);
    for my $h (split /\n+/, $in) {
        next if $h =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $h, 2;
        $v //= '';
        $chunked = 1 if lc($k) eq 'transfer-encoding' && $v eq 'chunked';
        $out .= "$k: $v\r\n";
    }
    return ($out, $chunked);
}

# Turns the text of one "request" ("GET /uri [HTTP/1.x]\nbody") into raw
# HTTP with Host, Connection, the more_headers and Content-Length.
sub build_request {
    my ($name, $text, $more, $chunked, $conn) = @_;
    my ($first, $body) = split /\n/, $text, 2;
    $first //= '';
    $first =~ s/\r$//;
    my ($meth, $uri, $ver) = split ' ', $first;
    bail_out("$name - Request line should be non-empty") unless defined $meth;
    $uri //= '/';
    $ver //= 'HTTP/1.1';
    $body //= '';

    my $len = '';
    if (!$chunked && $body ne '' && $more !~ /(?:^|\n)Content-Length:/) {
        $body =~ s/^\s+|\s+$//gs;
        $len = 'Content-Length: ' . length($body) . "\r\n";
    }
    $more =~ s/(?<!\r)\n/\r\n/g;
    my $h = '';
    $h .= "Host: $ServerName\r\n" if $more !~ /(?:^|\n)Host:/i;
    $h .= "Connection: $conn\r\n" if $more !~ /(?:^|\n)Connection/i;
    return "$meth $uri $ver\r\n$h$more$len\r\n$body";
}

sub more_headers_for {
    my ($block, $i) = @_;
    my $more = scalar($block->more_headers) // '';
    if (ref $more eq 'ARRAY') {
        my $h = $more->[$i];
        bail_out($block->name . " - --- more_headers lacks data for the "
                 . "request $i") unless defined $h;
        return parse_more_headers($h);
    }
    return parse_more_headers($more);
}

# Returns a list of requests; each is a list of packets {value, delay}.
sub requests_from_block {
    my ($block) = @_;
    my $name = $block->name;
    my @reqs;

    if (defined scalar($block->raw_request)) {
        my $raw = scalar($block->raw_request);
        my @p = ref $raw eq 'ARRAY' ? @$raw : ($raw);
        push @reqs, [map { { value => $_ } } @p];
        return \@reqs;
    }

    if (defined scalar($block->pipelined_requests)) {
        my $list = scalar($block->pipelined_requests);
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $list eq 'ARRAY';
        my $all = '';
        for my $i (0 .. $#$list) {
            my $r = expand_env_in_text($list->[$i], $name);
            my ($h, $c) = more_headers_for($block, $i);
            $all .= build_request($name, $r, $h, $c,
                                  $i == $#$list ? 'close' : 'keep-alive');
        }
        push @reqs, [{ value => $all }];
        return \@reqs;
    }

    my $request = scalar($block->request);
    bail_out("$name - request empty") unless defined $request;
    my @list = ref $request eq 'ARRAY' ? @$request : ($request);
    bail_out("$name - invalid ---request : MUST be string or array of "
             . "requests") if ref $request && ref $request ne 'ARRAY';
    for my $i (0 .. $#list) {
        my ($h, $c) = more_headers_for($block, $i);
        my $one = $list[$i];
        my @packets;
        if (ref $one eq 'ARRAY') {
            # packets are joined (the real runner keeps the split points)
            my $joined = join '', map { ref $_ ? $_->{value} : $_ } @$one;
            $one = $joined;
        }
        1 while $one =~ s/^\s*\#[^\n]+\s+|^\s+//gs;
        push @reqs, [{ value => build_request($name, $one, $h, $c,
                                              'close') }];
    }
    return \@reqs;
}

sub connect_server {
    my ($name, $timeout) = @_;
    for my $try (1 .. 40) {
        my $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr,
                                         PeerPort => $ServerPortForClient,
                                         Proto => 'tcp',
                                         Timeout => $timeout);
        return $sock if $sock;
        my $err = "$!";
        if ($NginxPid && !is_running($NginxPid)) {
            fail("$name - Can't connect to $ServerAddr:"
                 . "$ServerPortForClient: $err (nginx is gone)");
            return undef;
        }
        sleep($try < 10 ? 0.02 : 0.1);
    }
    fail("$name - Can't connect to $ServerAddr:$ServerPortForClient: "
         . "$! (aborted)");
    bail_out("$name - too many connect failures")
        if ++$TotalConnectFailures >= 3;
    return undef;
}

# Sends one request (packets) and reads until the server closes; the
# timeout is the longest silence allowed, as in the real runner.
sub send_request {
    my ($block, $packets, $timeout) = @_;
    my $name = $block->name;
    my $sock = connect_server($name, $timeout) or return undef;
    $sock->blocking(0);

    my $delay = parse_time(scalar($block->raw_request_middle_delay));
    my @todo = @$packets;
    my $buf = (shift @todo)->{value};
    my $resp = '';
    my $writing = 1;
    my $hard = time + ($timeout * 10 > 120 ? $timeout * 10 : 120);
    my $sel = IO::Select->new($sock);

    while (1) {
        $! = 0;
        my ($r, $w) = IO::Select->select($sel, $writing ? $sel : undef,
                                         undef, $timeout);
        if ((!$r || !@$r) && (!$w || !@$w)) {
            next if $! == EINTR && time < $hard;
            if (!defined scalar($block->abort)) {
                fail("ERROR: client socket timed out - $name\n");
            }
            last;
        }
        if ($w && @$w) {
            my $n = syswrite($sock, $buf);
            if (!defined $n) {
                if ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                    warn "write failed: $!\n";
                    $writing = 0;
                }
            } else {
                substr($buf, 0, $n) = '';
                if ($buf eq '') {
                    if (@todo) {
                        my $p = shift @todo;
                        my $d = $p->{delay_before} // $delay;
                        sleep $d if $d;
                        $buf = $p->{value};
                    } else {
                        $writing = 0;
                        if (defined scalar($block->shutdown)) {
                            shutdown($sock, 1);
                        }
                    }
                }
            }
        }
        if ($r && @$r) {
            my $n = sysread($sock, my $chunk, 65536);
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                warn "WARNING: $name - HTTP response read failure: $!\n";
                last;
            }
            last if $n == 0;
            $resp .= $chunk;
        }
        if (time > $hard) {
            fail("ERROR: client socket timed out - $name\n")
                unless defined scalar($block->abort);
            last;
        }
    }
    close $sock;
    return $resp;
}

# Parses one response off the front of $raw; returns (response object, raw
# header text, bytes left over).
sub parse_response {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = '';
    $raw_headers = $1 if $raw =~ /(.*?\r\n)\r\n/s;

    my $res = HTTP::Response->parse($raw);
    my $code = $res->code;
    if ($code && $code !~ /^\d+$/) {
        $res->code(undef);
        undef $code;
    }
    return ($res, $raw_headers, undef)
        if $code && ($code == 304 || $code == 101);

    my $left;
    my $te = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    my $body = $res->content // '';

    if ($head_req) {
        $left = $body if $body ne '';
        $res->content('');

    } elsif (defined $te && $te eq 'chunked') {
        my $decoded = '';
        my @trailers = $res->header('Trailer');
        my $pos = 0;
        while (1) {
            pos($body) = $pos;
            if ($body =~ /\G[ \t]*([A-Fa-f0-9]+)[ \t]*(?:;[^\r]*)?\r\n/gc) {
                my $size = hex $1;
                $pos = pos($body);
                if ($size == 0) {
                    # optional trailers, then CRLF
                    my $rest = substr($body, $pos);
                    if ($rest =~ /^((?:[^\r\n]+\r\n)*)\r\n/s) {
                        $pos += length($1) + 2;
                    } elsif (!@trailers) {
                        fail("$name - invalid chunked data received "
                             . "(expected CRLF).");
                        return ($res, $raw_headers, undef);
                    }
                    $left = substr($body, $pos) if $pos < length $body;
                    last;
                }
                if (length($body) - $pos < $size + 2
                    || substr($body, $pos + $size, 2) ne "\r\n")
                {
                    fail("$name - invalid chunked data received "
                         . "(not enough octets for the data section)");
                    return ($res, $raw_headers, undef);
                }
                $decoded .= substr($body, $pos, $size);
                $pos += $size + 2;
            } elsif ($pos < length $body) {
                fail("$name - invalid chunked body received: "
                     . substr($body, $pos, 80));
                return ($res, $raw_headers, undef);
            } else {
                fail("$name - no last chunk found - " . substr($body, 0, 200));
                return ($res, $raw_headers, undef);
            }
        }
        $res->content($decoded);

    } elsif (defined $len && $len =~ /^\d+$/) {
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, "
                 . "but got " . length($body) . "\n";
        } elsif (length $body > $len) {
            $left = substr($body, $len);
            $res->content(substr($body, 0, $len));
        }
    }
    return ($res, $raw_headers, $left);
}

sub check_error_code {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;
    my $got = ($res && $res->code) || '';
    if (defined scalar($block->error_code_like)) {
        my $v = get_indexed_value($name, scalar($block->error_code_like), $idx,
                                  $need_array);
        like($got, qr/$v/sm, "$name - status code ok");
    } elsif (defined scalar($block->error_code)) {
        is($got, get_indexed_value($name, scalar($block->error_code), $idx,
                                   $need_array), "$name - status code ok");
    } else {
        is($got, 200, "$name - status code ok");
    }
}

# "Name: value" and "!Name" lines; like the real runner, a name given
# twice (same case) keeps only its last line.
sub parse_headers_spec {
    my $s = shift;
    my (@order, %val);
    for my $line (split /\n/, $s // '') {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        my ($k, $v);
        if ($line =~ s/^!\s*//) {
            $k = $line;
        } else {
            ($k, $v) = split /\s*:\s*/, $line, 2;
        }
        push @order, $k unless exists $val{$k};
        $val{$k} = $v;
    }
    return [map { [$_, $val{$_}] } @order];
}

sub check_response_headers {
    my ($block, $res, $raw_headers, $idx, $need_array) = @_;
    my $name = $block->name;

    for my $sec (qw(raw_response_headers_like raw_response_headers_unlike)) {
        next unless defined scalar($block->$sec);
        my $exp = get_indexed_value($name, scalar($block->$sec), $idx, $need_array);
        if ($sec =~ /unlike/) {
            unlike($raw_headers, qr/$exp/s, "$name - raw resp headers unlike");
        } else {
            like($raw_headers, qr/$exp/s, "$name - raw resp headers like");
        }
    }

    if (defined scalar($block->response_headers)) {
        my $spec = get_indexed_value($name, scalar($block->response_headers), $idx,
                                     $need_array);
        for my $kv (@{ parse_headers_spec($spec) }) {
            my ($k, $v) = @$kv;
            if (!defined $v) {
                unlike($raw_headers, qr/^\s*\Q$k\E\s*:/ms,
                       "$name - header $k not present in the raw headers");
                next;
            }
            $v =~ s/\$ServerPort\b/$ServerPort/g;
            $v =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            my $got = $res ? $res->header($k) : undef;
            is($got // '', $v, "$name - header $k ok");
        }

    } elsif (defined scalar($block->response_headers_like)) {
        my $spec = get_indexed_value($name, scalar($block->response_headers_like),
                                     $idx, $need_array);
        for my $kv (@{ parse_headers_spec($spec) }) {
            my ($k, $v) = @$kv;
            my $got = $res ? $res->header($k) : undef;
            like($got // '', qr/^$v$/, "$name - header $k like ok");
        }
    }
}

sub run_body_filter {
    my ($block, $f, $c) = @_;
    return $f->($c) if ref $f eq 'CODE';
    my %builtin = (
        md5_hex  => sub { Digest::MD5::md5_hex($_[0]) },
        sha1_hex => sub { Digest::SHA::sha1_hex($_[0]) },
        uc => sub { uc $_[0] }, lc => sub { lc $_[0] },
        ucfirst => sub { ucfirst $_[0] }, lcfirst => sub { lcfirst $_[0] },
        length => sub { length $_[0] },
    );
    bail_out($block->name . " - unknown filter, \"$f\", specified in the "
             . "--- response_body_filters section") unless $builtin{$f};
    return $builtin{$f}->($c);
}

sub transform_response_body {
    my ($block, $res, $idx) = @_;
    my $filters = scalar($block->response_body_filters);
    return unless defined $filters && $res && defined $res->content;
    if (!ref $filters) {
        $filters =~ s/^\s+|\s+$//g;
        $filters = [split /\s+/, $filters];
    } elsif (ref $filters ne 'ARRAY') {
        $filters = [$filters];
    }
    $filters = $filters->[$idx] if ref $filters->[0] eq 'ARRAY';
    my $c = $res->content;
    for my $f (ref $filters eq 'ARRAY' ? @$filters : ($filters)) {
        $c = run_body_filter($block, $f, $c);
    }
    $res->content($c);
}

sub check_response_body {
    my ($block, $res, $idx, $rep, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->content : undef;

    if (defined scalar($block->response_body)) {
        my $exp = get_indexed_value($name, scalar($block->response_body), $idx,
                                    $need_array);
        if (defined $exp && !ref $exp) {
            $exp =~ s/\$ServerPort\b/$ServerPort/g;
            $exp =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            $exp = expand_env_in_text($exp, $name);
        }
        my $desc = "$name - response_body - response is expected "
                   . "(repeated req $rep, req $idx)";
        if (ref $exp) {
            like($content, $exp, "$name - response_body - like "
                 . "(repeated req $rep, req $idx)");
        } elsif ($NoLongString) {
            is($content, $exp, $desc);
        } else {
            Test::LongString::is_string($content, $exp, $desc);
        }

    } elsif (defined scalar($block->response_body_like)
             || defined scalar($block->response_body_unlike))
    {
        my $like = defined scalar($block->response_body_like);
        my $pat = get_indexed_value($name,
            $like ? scalar($block->response_body_like) : scalar($block->response_body_unlike),
            $idx, $need_array);
        $pat =~ s/\$ServerPort\b/$ServerPort/g;
        $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        my $summary = trim_str($content) // '';
        my $type = $like ? 'like' : 'unlike';
        my $desc = "$name - response_body_$type - response is expected "
                   . "($summary)";
        if ($like) {
            like($content, qr/$pat/s, $desc);
        } else {
            unlike($content, qr/$pat/s, $desc);
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $content, $idx, $rep, 0);
    }
}

# One pass over the block's requests (one of the repeat_each passes).
sub run_requests {
    my ($block, $rep) = @_;
    my $name = $block->name;
    my $reqs = requests_from_block($block);
    my $timeout = parse_time(scalar($block->timeout)) // $Timeout;
    my $wait = parse_time(scalar($block->wait));

    for my $idx (0 .. $#$reqs) {
        my $packets = $reqs->[$idx];
        my $head = ($packets->[0]{value} =~ /^\s*HEAD\s+/) ? 1 : 0;
        my $raw = send_request($block, $packets, $timeout) // '';

        my ($n, $need_array);
        if (scalar($block->pipelined_requests)) {
            $n = @{ scalar($block->pipelined_requests) };
            $need_array = 1;
        } else {
            $n = 1;
            $need_array = $#$reqs > 0;
        }

        my $sub_idx = $idx;
        for my $k (1 .. $n) {
            my ($res, $raw_headers, $left) = (undef, '', undef);
            if (!defined scalar($block->ignore_response)) {
                ($res, $raw_headers, $left) = parse_response($name, $raw,
                                                             $head);
                check_error_code($block, $res, $sub_idx, $need_array);
                check_response_headers($block, $res, $raw_headers, $sub_idx,
                                       $need_array);
                transform_response_body($block, $res, $sub_idx);
                check_response_body($block, $res, $sub_idx, $rep,
                                    $need_array);
            }
            $raw = $left // '';
            my $more = $k < $n || $idx < $#$reqs;
            if ($more) {
                # aai-nginx extension: code that waits for a state the next
                # request needs (the real runner has no such hook)
                $_->($block, $packets->[0]{value}, $res)
                    for @AfterRequestHandlers;
                sleep $wait if $wait;
                check_error_log($block, $rep);
            }
            $sub_idx++;
        }
    }

    sleep $wait if $wait;
    check_error_log($block, $rep);
}

# The real runner evaluates init, post_setup_server_root and skip_eval
# code inside its package Test::Nginx::Util, with strict on and no Test::More
# functions imported: do the same, so that code working here works there.
sub eval_like_real {
    my $code = shift;
    return eval "package Test::Nginx::Util; use strict; use warnings;\n"
                . $code;
}

sub check_skip {
    my ($block) = @_;
    my $name = $block->name;
    if (defined(my $se = scalar($block->skip_eval))) {
        if ($se =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            my ($n, $code) = ($1, $2);
            my $r = eval_like_real($code);
            bail_out("$name - skip_eval - failed to eval the Perl code "
                     . "\"$code\": $@") if $@;
            return ($n, 'skip_eval') if $r;
        }
    }
    if (defined(my $sn = scalar($block->skip_nginx))) {
        if ($sn =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                    (?:\s*:\s*(.*))?\s*$/x)
        {
            my ($n, $op, @v) = ($1, $2, $3, $4, $5);
            my $reason = $6 || "nginx version $op $v[0].$v[1].$v[2]";
            my $want = sprintf "%d.%03d%03d", @v;
            my $have = nginx_version();
            return ($n, $reason) if defined $have && eval "$have $op $want";
        } else {
            bail_out("$name - Invalid --- skip_nginx spec: $sn");
        }
    }
    return;
}

our $NginxVersionCache;
sub nginx_version {
    return $NginxVersionCache if defined $NginxVersionCache;
    my $out = `$NginxBinary -V 2>&1`;
    if ($out =~ m{nginx version: \S+/(\d+)\.(\d+)\.(\d+)}) {
        $NginxVersionCache = sprintf "%d.%03d%03d", $1, $2, $3;
    }
    return $NginxVersionCache;
}

sub run_test {
    my ($block) = @_;
    my $name = $block->name;

    return if defined scalar($block->SKIP);

    my ($skip_n, $skip_reason) = check_skip($block);
    if (defined $skip_n) {
        SKIP: { skip("$name - $skip_reason", $skip_n); }
        return;
    }

    $RandPorts = {};
    my $config = scalar($block->config);
    $config = $PrevConfig unless defined $config;
    $config //= '';
    $PrevConfig = $config;
    $config = expand_env_in_text($config, $name);

    if ($NginxPid) {
        stop_nginx($name, $NginxPid);
        undef $NginxPid;
    }

    setup_server_root();
    if (scalar($block->post_setup_server_root)) {
        eval_like_real(scalar($block->post_setup_server_root));
        bail_out("$name - post_setup_server_root failed: $@") if $@;
    }
    write_user_files($block);
    write_config_file($block, $config);
    $ErrLogFilePos = 0;

    if (defined scalar($block->must_die)) {
        my $must_die = scalar($block->must_die);
        my $status = run_nginx_cmd($name);
        my $code = defined $status ? $status >> 8 : undef;
        if (!defined $status) {
            fail("$name - nginx did not exit in time");
        } elsif ($must_die =~ /^\s*\d+\s*$/) {
            is($must_die + 0, $code, "$name - die with the expected exit "
               . "code");
        } else {
            isnt($status, 0, "$name - die as expected");
        }
        check_error_log($block, 0);
        if (defined $status && $status == 0) {
            warn "WARNING: $name - nginx must die but it does not; "
                 . "killing it\n";
            stop_nginx($name, read_pid_file(1));
        }
        check_asan($name);
        return;
    }

    start_nginx($block) or do { check_asan($name); return; };

    if (scalar($block->init)) {
        eval_like_real(scalar($block->init));
        bail_out("$name - init failed: $@") if $@;
    }

    for my $rep (0 .. $RepeatEach - 1) {
        write_user_files($block) if $rep > 0;
        my $ok = eval { run_requests($block, $rep); 1 };
        if (!$ok) {
            my $err = $@;
            stop_nginx($name, $NginxPid);
            undef $NginxPid;
            die $err;
        }
    }

    if (!$ENV{TEST_NGINX_NO_CLEAN}) {
        if (!is_running($NginxPid)) {
            fail("$name - nginx (pid $NginxPid) is gone at the end of the "
                 . "block (crashed?)");
        }
        stop_nginx($name, $NginxPid);
        undef $NginxPid;
        check_shutdown_error_log($block);
    }
    check_asan($name);
}

sub run_tests {
    srand($$ ^ int(time * 1000));
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;

    my @blocks = Test::Base::blocks();
    @blocks = shuffle @blocks unless $NoShuffle;

    for my $block (@blocks) {
        for my $h (@BlockPreprocessors) {
            $h->($block);
        }
        $block->set_value('name', "$0 " . $block->name);
        run_test($block);
        for my $h (@TestCleanupHandlers) {
            $h->($block);
        }
    }
    cleanup();
}

# a killed test run (CI timeout, ^C, t/run-tests stopping) still runs the
# END blocks, which stop nginx
for my $sig (qw( INT TERM HUP )) {
    next if ref $SIG{$sig};
    $SIG{$sig} = sub {
        # prove may be gone already: writing to its pipes must not kill us
        # before END has stopped nginx
        $SIG{PIPE} = 'IGNORE';
        warn "$0: caught SIG$sig, stopping nginx\n";
        exit 1;
    };
}

END {
    return if $InSubprocess;
    local $?;
    cleanup();
    # an nginx of ours may have outlived a die(); its pid file tells
    if (!$ENV{TEST_NGINX_NO_CLEAN} && -f $PidFile) {
        my $pid = read_pid_file(0);
        if ($pid && is_running($pid)) {
            my $cmd = '';
            if (open my $in, '<', "/proc/$pid/cmdline") {
                local $/;
                $cmd = <$in> // '';
                close $in;
            }
            stop_nginx('END', $pid) if index($cmd, $ServRoot) >= 0;
        }
    }
}

1;
