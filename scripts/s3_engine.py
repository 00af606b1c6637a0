#!/usr/bin/python3
"""A real S3 engine for narfs's tests: OpenStack Swift (Debian's python3-swift) with its
s3api middleware, all four servers (proxy, account, container, object) in this one
process, on 127.0.0.1, storing into a temp directory. Started and stopped by
test/support/s3-engine.ts; can also be run by hand:

    /usr/bin/python3 scripts/s3_engine.py --dir /tmp/swift-x [--port 0]

Invariants:
- one process, one pid: the four WSGI servers share one eventlet hub (workers = 0 in Swift
  terms), so stopping the engine is one SIGTERM to this pid, and nothing outlives it;
- every socket is bound before anything is announced, so the announcement line
  `{"port": N, ...}` on stdout means "requests are accepted now" (they wait in the listen
  backlog until the hub runs); readiness is then proven by GET /healthcheck, never by a sleep;
- nothing leaves loopback, nothing is read from or written to /etc/swift: swift.conf, the
  three rings and the server configs are written under --dir, and Swift's syslog logging is
  replaced by stderr;
- credentials are tempauth's: access key "narfs:tester", secret "narfs-secret" (admin of
  account AUTH_narfs), region us-east-1, path-style addressing.

Why Swift and not radosgw: radosgw needs a running Ceph cluster (monitor + OSD daemons and
their keyrings) under it; Swift needs only Python and a directory with user xattrs.
Memcache: tempauth insists on a `swift.cache`; a small in-process dict stands in for
memcached (the `memory_cache` filter below) so that no extra daemon is needed.
"""
import argparse
import json
import logging
import os
import socket
import sys
import time

ACCESS_KEY = 'narfs:tester'
SECRET_KEY = 'narfs-secret'


class MemoryCache(object):
    """The subset of Swift's MemcacheRing that tempauth and the proxy use, in a dict."""

    def __init__(self):
        self._d = {}

    def _live(self, key):
        v = self._d.get(key)
        if v is None:
            return None
        value, expires = v
        if expires and expires < time.time():
            del self._d[key]
            return None
        return value

    def get(self, key, raise_on_error=False):
        return self._live(key)

    def set(self, key, value, serialize=True, time=0, min_compress_len=0, raise_on_error=False):
        import time as _t
        self._d[key] = (value, _t.time() + time if time else 0)

    def incr(self, key, delta=1, time=0):
        v = (self._live(key) or 0) + delta
        self.set(key, v, time=time)
        return v

    def decr(self, key, delta=1, time=0):
        return self.incr(key, -delta, time)

    def delete(self, key, server_key=None):
        self._d.pop(key, None)

    def get_multi(self, keys, server_key):
        return [self._live(k) for k in keys]

    def set_multi(self, mapping, server_key, serialize=True, time=0, min_compress_len=0):
        for k, v in mapping.items():
            self.set(k, v, time=time)


_CACHE = MemoryCache()


def memory_cache(global_conf, **local_conf):
    """paste filter factory: puts the shared MemoryCache into every request's environ."""

    def make(app):
        def middleware(env, start_response):
            env['swift.cache'] = _CACHE
            return app(env, start_response)
        return middleware
    return make


class StderrSyslog(logging.StreamHandler):
    """Stands in for Swift's syslog handler: log lines go to stderr."""

    def __init__(self, *args, **kwargs):
        logging.StreamHandler.__init__(self, sys.stderr)


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(128)
    return s


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--dir', required=True, help='state directory (configs, rings, objects)')
    ap.add_argument('--port', type=int, default=0, help='S3/Swift proxy port; 0 = any free port')
    ap.add_argument('--log-level', default='WARNING')
    args = ap.parse_args()
    base = os.path.abspath(args.dir)
    etc = os.path.join(base, 'etc')
    devices = os.path.join(base, 'srv')
    os.makedirs(etc, exist_ok=True)
    os.makedirs(os.path.join(devices, 'd1'), exist_ok=True)

    # Bind first: the ring must name the backend ports, and the announcement must mean "ready".
    socks = {'proxy': listen(args.port), 'account': listen(0), 'container': listen(0), 'object': listen(0)}
    ports = {k: s.getsockname()[1] for k, s in socks.items()}

    write(os.path.join(etc, 'swift.conf'),
          '[swift-hash]\nswift_hash_path_suffix = narfs-test\n\n'
          '[storage-policy:0]\nname = Policy-0\ndefault = yes\n')
    common = ('[DEFAULT]\nswift_dir = %s\ndevices = %s\nmount_check = false\nbind_ip = 127.0.0.1\n'
              'workers = 0\nlog_level = %s\nlog_name = swift\n' % (etc, devices, args.log_level))
    for kind in ('account', 'container', 'object'):
        write(os.path.join(etc, kind + '-server.conf'),
              common + 'bind_port = %d\n\n[pipeline:main]\npipeline = %s-server\n\n'
              '[app:%s-server]\nuse = egg:swift#%s\n' % (ports[kind], kind, kind, kind))
    write(os.path.join(etc, 'proxy-server.conf'),
          common + 'bind_port = %d\n\n'
          '[pipeline:main]\n'
          'pipeline = catch_errors gatekeeper healthcheck proxy-logging memcache listing_formats '
          's3api tempauth proxy-logging proxy-server\n\n'
          '[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n'
          '[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n'
          '[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n'
          '[filter:healthcheck]\nuse = egg:swift#healthcheck\n\n'
          '[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n'
          '[filter:memcache]\npaste.filter_factory = s3_engine:memory_cache\n\n'
          '[filter:listing_formats]\nuse = egg:swift#listing_formats\n\n'
          '[filter:s3api]\nuse = egg:swift#s3api\nlocation = us-east-1\n'
          'allow_multipart_uploads = false\n\n'
          '[filter:tempauth]\nuse = egg:swift#tempauth\nuser_narfs_tester = %s .admin\n'
          % (ports['proxy'], SECRET_KEY))

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from swift.common import utils
    utils.ThreadSafeSysLogHandler = StderrSyslog
    utils.SWIFT_CONF_FILE = os.path.join(etc, 'swift.conf')
    utils.validate_configuration()
    from swift.common import storage_policy
    storage_policy.reload_storage_policies()
    from swift.common.ring import RingBuilder

    for kind in ('account', 'container', 'object'):
        rb = RingBuilder(4, 1, 1)  # 2^4 partitions, 1 replica, min_part_hours 1
        rb.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': ports[kind],
                    'device': 'd1', 'weight': 1.0, 'meta': ''})
        rb.rebalance()
        rb.get_ring().save(os.path.join(etc, kind + '.ring.gz'))

    utils.eventlet_monkey_patch()
    import eventlet
    import eventlet.wsgi
    from swift.common.wsgi import loadapp

    apps = {k: loadapp(os.path.join(etc, k + '-server.conf')) for k in ('account', 'container', 'object', 'proxy')}
    # Re-wrap the bound sockets as green sockets for the eventlet hub.
    green = {k: eventlet.greenio.GreenSocket(s) for k, s in socks.items()}
    quiet = logging.getLogger('s3_engine.wsgi')
    quiet.setLevel(logging.WARNING)
    threads = [eventlet.spawn(eventlet.wsgi.server, green[k], apps[k], log=quiet, log_output=False)
               for k in apps]
    print(json.dumps({'port': ports['proxy'], 'pid': os.getpid(), 'accessKey': ACCESS_KEY,
                      'secretKey': SECRET_KEY, 'region': 'us-east-1'}), flush=True)
    try:
        for t in threads:
            t.wait()
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
