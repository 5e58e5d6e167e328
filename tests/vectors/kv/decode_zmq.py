import json, sys, msgpack
from collections import defaultdict
from dynamo_lite.protocol import zmtp, twopart
from dynamo_lite.protocol.request_plane import RequestFrameDecoder
rows=[json.loads(l) for l in open(sys.argv[1])]
conns={}
def norm(o):
    if isinstance(o,bytes): return {"bytes":o.hex()}
    if isinstance(o,dict): return {str(k):norm(v) for k,v in o.items()}
    if isinstance(o,list): return [norm(v) for v in o]
    return o
for r in rows:
    if r['dir'] in('open','close','marker'): continue
    key=(r['conn'],r['dir'])
    if r['target']=='rpc':
        if r['dir']=='frontend->worker':
            d=conns.setdefault(key,RequestFrameDecoder())
            for fr in d.feed(bytes.fromhex(r['hex'])):
                tp=twopart.decode(fr.payload)
                print("RPC", r['conn'], fr.path, fr.headers)
                print("   hdr", tp.header[:400])
                try: print("   body", norm(msgpack.unpackb(tp.body, raw=False)))
                except Exception as e: print("   body?", tp.body[:200], e)
        continue
    st=conns.get(key)
    if st is None:
        st=conns[key]=zmtp.ZmtpConnection(socket_type=b"SUB" if r['dir']=='worker->frontend' else b"PUB")
    for ev in st.feed(bytes.fromhex(r['hex'])):
        if isinstance(ev,zmtp.Message):
            p=ev.parts
            print("MSG", r['t'], r['target'], [x[:40] for x in p[:-1]], len(p[-1]))
            raw=p[-1]; print('   prefix', raw[:5].hex()); env=msgpack.unpackb(raw[5:], raw=False)
            env=norm(env)
            if isinstance(env.get('payload'),dict) and 'bytes' in env['payload']:
                inner=bytes.fromhex(env['payload']['bytes'])
                try: env['payload_decoded']=norm(msgpack.unpackb(inner,raw=False))
                except Exception:
                    env['payload_decoded']=inner.decode(errors='replace')
            print("   ", json.dumps(env)[:3000])
        else:
            print("EV", r['t'], r['target'], r['dir'], ev)
