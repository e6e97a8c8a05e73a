//! Tracker tests: real traffic captured from PostgreSQL 15 (`pgbench`, `psql`) through a
//! logging TCP proxy, replayed chunk by chunk, and hand-built messages for the edges
//! (truncation, loss, old connections, limits).

use proptest::prelude::*;

use super::*;

const IN: Flow = Flow::Inbound;
const OUT: Flow = Flow::Outbound;

// === Fixtures ===
//
// One line per `recv` of the proxy: `C` client → server, `S` server → client, then the
// bytes in hex. Captured 2026-12-01 from PostgreSQL 15.18 on 127.0.0.1 (database `bench`,
// `pgbench -i -s 1`), clients with `sslmode=prefer` (hence the refused SSLRequest).

/// `psql`: `SELECT 1 AS one;`, a failing `SELECT * FROM no_such_table WHERE email =
/// 'a@b.c';`, `BEGIN;`, a `SELECT … aid = 7;`, `COMMIT;`.
const PSQL: &str = "\
C 0000000804d2162f\n\
S 4e\n\
C 0000003c000300007573657200706f7374677265730064617461626173650062656e6368006170706c69636174696f6e5f6e616d65007073716c0000\n\
S 520000000800000000530000001a6170706c69636174696f6e5f6e616d65007073716c005300000019636c69656e745f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e3138202844656269616e2031352e31382d302b646562313275312900530000002373657373696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c000074a9e797db415a0000000549\n\
C 510000001553454c4543542031204153206f6e653b00\n\
S 540000001c00016f6e6500000000000000000000170004ffffffff0000440000000b00010000000131430000000d53454c4543542031005a0000000549\n\
C 510000003753454c454354202a2046524f4d206e6f5f737563685f7461626c6520574845524520656d61696c203d20276140622e63273b00\n\
S 4500000070534552524f5200564552524f5200433432503031004d72656c6174696f6e20226e6f5f737563685f7461626c652220646f6573206e6f7420657869737400503135004670617273655f72656c6174696f6e2e63004c3133393200527061727365724f70656e5461626c650000\n\
S 5a0000000549\n\
C 510000000b424547494e3b00\n\
S 430000000a424547494e005a0000000554\n\
C 510000003953454c454354206162616c616e63652046524f4d20706762656e63685f6163636f756e747320574845524520616964203d20373b00\n\
S 540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000b00010000000130430000000d53454c4543542031005a0000000554\n\
C 510000000c434f4d4d49543b00\n\
S 430000000b434f4d4d4954005a0000000549\n\
C 5800000004";

/// `pgbench -M extended -t 2 -c 1 -n bench`: Parse/Bind/Describe/Execute/Sync per statement,
/// unnamed statement, 7 statements per transaction.
const PGBENCH_EXTENDED: &str = "\
C 0000000804d2162f\n\
S 4e\n\
C 0000003f000300007573657200706f7374677265730064617461626173650062656e6368006170706c69636174696f6e5f6e616d6500706762656e63680000\n\
S 520000000800000000530000001d6170706c69636174696f6e5f6e616d6500706762656e6368005300000019636c69656e745f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e3138202844656269616e2031352e31382d302b646562313275312900530000002373657373696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c0000747757ba8a505a0000000549\n\
C 500000000e00424547494e3b000000420000000e0000000000000001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000a424547494e005a0000000554\n\
C 500000004c0055504441544520706762656e63685f6163636f756e747320534554206162616c616e6365203d206162616c616e6365202b20243120574845524520616964203d2024323b000000420000001f00000000000200000004313236350000000531333533310001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000003d0053454c454354206162616c616e63652046524f4d20706762656e63685f6163636f756e747320574845524520616964203d2024313b00000042000000170000000000010000000531333533310001000044000000065000450000000900000000005300000004\n\
S 31000000043200000004540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000e00010000000431323635430000000d53454c4543542031005a0000000554\n\
C 500000004b0055504441544520706762656e63685f74656c6c65727320534554207462616c616e6365203d207462616c616e6365202b20243120574845524520746964203d2024323b000000420000001b000000000002000000043132363500000001350001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000004c0055504441544520706762656e63685f6272616e6368657320534554206262616c616e6365203d206262616c616e6365202b20243120574845524520626964203d2024323b000000420000001b000000000002000000043132363500000001310001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000006d00494e5345525420494e544f20706762656e63685f686973746f727920287469642c206269642c206169642c2064656c74612c206d74696d65292056414c554553202824312c2024322c2024332c2024342c2043555252454e545f54494d455354414d50293b00000042000000290000000000040000000135000000013100000005313335333100000004313236350001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000f494e5345525420302031005a0000000554\n\
C 500000000c00454e443b000000420000000e0000000000000001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000b434f4d4d4954005a0000000549\n\
C 500000000e00424547494e3b000000420000000e0000000000000001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000a424547494e005a0000000554\n\
C 500000004c0055504441544520706762656e63685f6163636f756e747320534554206162616c616e6365203d206162616c616e6365202b20243120574845524520616964203d2024323b000000420000001f00000000000200000004333837320000000537303133380001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000003d0053454c454354206162616c616e63652046524f4d20706762656e63685f6163636f756e747320574845524520616964203d2024313b00000042000000170000000000010000000537303133380001000044000000065000450000000900000000005300000004\n\
S 31000000043200000004540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000e00010000000433383732430000000d53454c4543542031005a0000000554\n\
C 500000004b0055504441544520706762656e63685f74656c6c65727320534554207462616c616e6365203d207462616c616e6365202b20243120574845524520746964203d2024323b000000420000001b000000000002000000043338373200000001350001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000004c0055504441544520706762656e63685f6272616e6368657320534554206262616c616e6365203d206262616c616e6365202b20243120574845524520626964203d2024323b000000420000001b000000000002000000043338373200000001310001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000006d00494e5345525420494e544f20706762656e63685f686973746f727920287469642c206269642c206169642c2064656c74612c206d74696d65292056414c554553202824312c2024322c2024332c2024342c2043555252454e545f54494d455354414d50293b00000042000000290000000000040000000135000000013100000005373031333800000004333837320001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000f494e5345525420302031005a0000000554\n\
C 500000000c00454e443b000000420000000e0000000000000001000044000000065000450000000900000000005300000004\n\
S 310000000432000000046e00000004430000000b434f4d4d4954005a0000000549\n\
C 5800000004";

/// `pgbench -M prepared -t 2 -c 1 -n bench`: each statement prepared once (`P_0`…`P_6`,
/// Parse + Sync), then Bind/Describe/Execute/Sync.
const PGBENCH_PREPARED: &str = "\
C 0000000804d2162f\n\
S 4e\n\
C 0000003f000300007573657200706f7374677265730064617461626173650062656e6368006170706c69636174696f6e5f6e616d6500706762656e63680000\n\
S 520000000800000000530000001d6170706c69636174696f6e5f6e616d6500706762656e6368005300000019636c69656e745f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e3138202844656269616e2031352e31382d302b646562313275312900530000002373657373696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c00007487ec5f5a8e5a0000000549\n\
C 5000000011505f3000424547494e3b0000005300000004\n\
S 31000000045a0000000549\n\
C 420000001100505f3000000000000001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000a424547494e005a0000000554\n\
C 500000004f505f310055504441544520706762656e63685f6163636f756e747320534554206162616c616e6365203d206162616c616e6365202b20243120574845524520616964203d2024323b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000002200505f310000000002000000042d3439390000000537363334360001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 5000000040505f320053454c454354206162616c616e63652046524f4d20706762656e63685f6163636f756e747320574845524520616964203d2024313b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000001a00505f3200000000010000000537363334360001000044000000065000450000000900000000005300000004\n\
S 3200000004540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000e0001000000042d343939430000000d53454c4543542031005a0000000554\n\
C 500000004e505f330055504441544520706762656e63685f74656c6c65727320534554207462616c616e6365203d207462616c616e6365202b20243120574845524520746964203d2024323b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000001e00505f330000000002000000042d34393900000001370001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 500000004f505f340055504441544520706762656e63685f6272616e6368657320534554206262616c616e6365203d206262616c616e6365202b20243120574845524520626964203d2024323b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000001e00505f340000000002000000042d34393900000001310001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 5000000070505f3500494e5345525420494e544f20706762656e63685f686973746f727920287469642c206269642c206169642c2064656c74612c206d74696d65292056414c554553202824312c2024322c2024332c2024342c2043555252454e545f54494d455354414d50293b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000002c00505f35000000000400000001370000000131000000053736333436000000042d3439390001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000f494e5345525420302031005a0000000554\n\
C 500000000f505f3600454e443b0000005300000004\n\
S 31000000045a0000000554\n\
C 420000001100505f3600000000000001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000b434f4d4d4954005a0000000549\n\
C 420000001100505f3000000000000001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000a424547494e005a0000000554\n\
C 420000002200505f310000000002000000042d3830370000000532313536340001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 420000001a00505f3200000000010000000532313536340001000044000000065000450000000900000000005300000004\n\
S 3200000004540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000e0001000000042d383037430000000d53454c4543542031005a0000000554\n\
C 420000001e00505f330000000002000000042d38303700000001340001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 420000001e00505f340000000002000000042d38303700000001310001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000d5550444154452031005a0000000554\n\
C 420000002c00505f35000000000400000001340000000131000000053231353634000000042d3830370001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000f494e5345525420302031005a0000000554\n\
C 420000001100505f3600000000000001000044000000065000450000000900000000005300000004\n\
S 32000000046e00000004430000000b434f4d4d4954005a0000000549\n\
C 5800000004";

/// `pgbench -M extended` with `\startpipeline`, three `SELECT`s, `\endpipeline`: three
/// Executes in one batch, one Sync.
const PIPELINE_EXTENDED: &str = "\
C 0000000804d2162f\n\
S 4e\n\
C 0000003f000300007573657200706f7374677265730064617461626173650062656e6368006170706c69636174696f6e5f6e616d6500706762656e63680000\n\
S 520000000800000000530000001d6170706c69636174696f6e5f6e616d6500706762656e6368005300000019636c69656e745f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e3138202844656269616e2031352e31382d302b646562313275312900530000002373657373696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c00007317281bc7425a0000000549\n\
C 500000003c0053454c454354206162616c616e63652046524f4d20706762656e63685f6163636f756e747320574845524520616964203d20313b000000420000000e00000000000000010000440000000650004500000009000000000050000000110053454c45435420323b000000420000000e00000000000000010000440000000650004500000009000000000050000000110053454c45435420333b000000420000000e0000000000000001000044000000065000450000000900000000005300000004\n\
S 31000000043200000004540000002100016162616c616e636500000040070003000000170004ffffffff0000440000000b00010000000130430000000d53454c45435420310031000000043200000004540000002100013f636f6c756d6e3f00000000000000000000170004ffffffff0000440000000b00010000000132430000000d53454c45435420310031000000043200000004540000002100013f636f6c756d6e3f00000000000000000000170004ffffffff0000440000000b00010000000133430000000d53454c4543542031005a0000000549\n\
C 5800000004";

/// `pgbench -M prepared`, pipeline of `SELECT 1;`, `SELECT 1/0;`, `SELECT 2;`: the second
/// fails (22012), the server skips the third until the Sync.
const PIPELINE_PREPARED_ERROR: &str = "\
C 0000000804d2162f\n\
S 4e\n\
C 0000003f000300007573657200706f7374677265730064617461626173650062656e6368006170706c69636174696f6e5f6e616d6500706762656e63680000\n\
S 520000000800000000530000001d6170706c69636174696f6e5f6e616d6500706762656e6368005300000019636c69656e745f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d445900530000002664656661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e74657276616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e3138202844656269616e2031352e31382d302b646562313275312900530000002373657373696f6e5f617574686f72697a6174696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c00007322528a42ad5a0000000549\n\
C 5000000014505f300053454c45435420313b0000005300000004\n\
S 31000000045a0000000549\n\
C 5000000016505f310053454c45435420312f303b0000005300000004\n\
S 31000000045a0000000549\n\
C 5000000014505f320053454c45435420323b0000005300000004\n\
S 31000000045a0000000549\n\
C 420000001100505f300000000000000100004400000006500045000000090000000000420000001100505f310000000000000100004400000006500045000000090000000000420000001100505f3200000000000001000044000000065000450000000900000000005300000004\n\
S 3200000004540000002100013f636f6c756d6e3f00000000000000000000170004ffffffff0000440000000b00010000000131430000000d53454c4543542031004500000041534552524f5200564552524f5200433232303132004d6469766973696f6e206279207a65726f0046696e742e63004c3836390052696e74346469760000\n\
S 5a0000000549\n\
C 5800000004";

/// The chunks of a fixture: (client bytes?, bytes).
fn chunks(fixture: &str) -> Vec<(bool, Vec<u8>)> {
    fixture
        .lines()
        .map(|line| {
            let (dir, hex) = line.split_once(' ').unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (dir == "C", bytes)
        })
        .collect()
}

/// Replays a fixture as the client (`request_flow` Outbound) or the server (Inbound).
fn replay(fixture: &str, request_flow: Flow) -> (Vec<DbExchange>, Counters) {
    let mut conn = Connection::new(request_flow, true);
    let mut out = Vec::new();
    for (i, (client, bytes)) in chunks(fixture).into_iter().enumerate() {
        let flow = if client {
            request_flow
        } else {
            request_flow.opposite()
        };
        conn.feed(flow, &bytes, bytes.len() as u64, i as u64 + 1, &mut out);
    }
    conn.close(10_000, &mut out);
    (out, conn.counters().clone())
}

fn ops(xs: &[DbExchange]) -> Vec<Option<&str>> {
    xs.iter().map(|x| x.operation.as_deref()).collect()
}

// === Message builders ===

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p);
        b.push(0);
    }
    b
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(cstrs(&[k.as_bytes(), v.as_bytes()]));
    }
    body.push(0);
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend(body);
    m
}

fn ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), SSL_REQUEST.to_be_bytes()].concat()
}

fn query(text: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[text.as_bytes()]))
}

fn parse(name: &str, text: &str) -> Vec<u8> {
    let mut b = cstrs(&[name.as_bytes(), text.as_bytes()]);
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'P', &b)
}

fn bind(portal: &str, statement: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut b = cstrs(&[portal.as_bytes(), statement.as_bytes()]);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as u32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'B', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstrs(&[portal.as_bytes()]);
    b.extend_from_slice(&0u32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstrs(&[tag.as_bytes()]))
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn error(code: &str) -> Vec<u8> {
    let mut b = cstrs(&[b"SERROR", format!("C{code}").as_bytes(), b"Mit failed"]);
    b.push(0);
    msg(b'E', &b)
}

fn row(values: &[&[u8]]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
    }
    msg(b'D', &b)
}

fn row_description() -> Vec<u8> {
    let mut b = 1u16.to_be_bytes().to_vec();
    b.extend(cstrs(&[b"big"]));
    b.extend_from_slice(&[0; 18]);
    msg(b'T', &b)
}

/// A client connection with its startup done, as `psql -d bench` would leave it.
fn started() -> (Connection, Vec<DbExchange>) {
    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    let s = startup(&[("user", "alice"), ("database", "bench")]);
    conn.feed(OUT, &s, s.len() as u64, 1, &mut out);
    let auth = [msg(b'R', &0u32.to_be_bytes()), ready()].concat();
    conn.feed(IN, &auth, auth.len() as u64, 2, &mut out);
    (conn, out)
}

fn feed_all(conn: &mut Connection, flow: Flow, bytes: &[u8], ts: u64, out: &mut Vec<DbExchange>) {
    conn.feed(flow, bytes, bytes.len() as u64, ts, out);
}

// === Real traffic ===

#[test]
fn psql_simple_queries_with_an_error() {
    let (xs, c) = replay(PSQL, OUT);
    assert_eq!(
        ops(&xs),
        [
            Some("SELECT"),
            Some("SELECT"),
            Some("BEGIN"),
            Some("SELECT"),
            Some("COMMIT")
        ]
    );
    assert!(
        xs.iter()
            .all(|x| x.system == "postgresql" && x.request_flow == OUT)
    );
    assert!(xs.iter().all(|x| x.namespace.as_deref() == Some("bench")));
    assert!(xs.iter().all(|x| !x.partial && !x.no_response));
    assert_eq!(xs[0].query_text.as_deref(), Some("SELECT ? AS one;"));
    assert_eq!(xs[0].error_code, None);
    assert_eq!(
        xs[1].query_text.as_deref(),
        Some("SELECT * FROM no_such_table WHERE email = ?;")
    );
    assert_eq!(xs[1].collection.as_deref(), Some("no_such_table"));
    assert_eq!(xs[1].error_code.as_deref(), Some("42P01"));
    // The error and the ReadyForQuery came in separate reads: the exchange ends at the
    // ReadyForQuery's.
    assert_eq!((xs[1].start_ns, xs[1].end_ns), (7, 9));
    assert_eq!(xs[3].collection.as_deref(), Some("pgbench_accounts"));
    assert_eq!(xs[3].request_bytes, 58);
    assert_eq!(xs[3].response_bytes, 66);
    for x in &xs {
        // The user name (`postgres`) is not exported, nor any literal in what is exported by
        // default (the raw text is kept only for `attributes.db_query_sanitize: false`).
        let exported = DbExchange {
            raw_query_text: None,
            ..x.clone()
        };
        assert!(!format!("{exported:?}").contains("postgres\""), "{x:?}");
        assert!(!format!("{exported:?}").contains("a@b.c"), "{x:?}");
    }
    assert_eq!(c.exchanges, 5);
    assert_eq!(
        (c.desync, c.orphan_replies, c.no_response, c.encrypted),
        (0, 0, 0, 0)
    );
}

#[test]
fn psql_seen_from_the_server() {
    let (client, _) = replay(PSQL, OUT);
    let (server, c) = replay(PSQL, IN);
    assert_eq!(server.len(), client.len());
    for (s, cl) in server.iter().zip(&client) {
        assert_eq!(s.request_flow, IN);
        assert_eq!(
            DbExchange {
                request_flow: OUT,
                ..s.clone()
            },
            *cl
        );
    }
    assert_eq!(c.desync, 0);
}

const PGBENCH_OPS: [Option<&str>; 7] = [
    Some("BEGIN"),
    Some("UPDATE"),
    Some("SELECT"),
    Some("UPDATE"),
    Some("UPDATE"),
    Some("INSERT"),
    Some("END"),
];

fn assert_pgbench(xs: &[DbExchange]) {
    let want: Vec<_> = PGBENCH_OPS.iter().chain(&PGBENCH_OPS).copied().collect();
    assert_eq!(ops(xs), want);
    assert!(
        xs.iter()
            .all(|x| !x.partial && !x.no_response && x.error_code.is_none())
    );
    assert!(xs.iter().all(|x| x.namespace.as_deref() == Some("bench")));
    assert_eq!(
        xs[1].query_text.as_deref(),
        Some("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;")
    );
    assert_eq!(xs[1].collection.as_deref(), Some("pgbench_accounts"));
    assert_eq!(xs[5].collection.as_deref(), Some("pgbench_history"));
    assert_eq!(xs[6].collection, None);
    assert!(xs.iter().all(|x| x.start_ns < x.end_ns));
}

#[test]
fn pgbench_extended() {
    let (xs, c) = replay(PGBENCH_EXTENDED, OUT);
    assert_pgbench(&xs);
    assert_eq!(c.exchanges, 14);
    assert_eq!(
        (c.desync, c.orphan_replies, c.unknown_statements),
        (0, 0, 0)
    );
    // P + B + D + E of `BEGIN;`.
    assert_eq!(xs[0].request_bytes, 15 + 15 + 7 + 10);
}

#[test]
fn pgbench_prepared() {
    let (xs, c) = replay(PGBENCH_PREPARED, OUT);
    assert_pgbench(&xs);
    assert_eq!(c.statements_cached, 7);
    assert_eq!(
        (c.desync, c.orphan_replies, c.unknown_statements),
        (0, 0, 0)
    );
    let (server, _) = replay(PGBENCH_PREPARED, IN);
    assert_pgbench(&server);
}

#[test]
fn pipelined_batch_pairs_in_order() {
    let (xs, c) = replay(PIPELINE_EXTENDED, OUT);
    assert_eq!(ops(&xs), [Some("SELECT"); 3]);
    let texts: Vec<_> = xs
        .iter()
        .map(|x| x.query_text.as_deref().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            "SELECT ?;",
            "SELECT ?;"
        ]
    );
    assert!(xs.iter().all(|x| x.error_code.is_none() && !x.no_response));
    assert_eq!(c.exchanges, 3);
}

#[test]
fn error_in_a_pipeline_skips_the_rest_of_the_batch() {
    let (xs, c) = replay(PIPELINE_PREPARED_ERROR, OUT);
    let got: Vec<_> = xs
        .iter()
        .map(|x| (x.query_text.as_deref().unwrap(), x.error_code.as_deref()))
        .collect();
    assert_eq!(got, [("SELECT ?;", None), ("SELECT ?/?;", Some("22012"))]);
    assert_eq!(c.not_executed, 1);
    assert_eq!((c.no_response, c.orphan_replies), (0, 0));
}

// === Hand-built edges ===

#[test]
fn ssl_refused_continues_in_cleartext_and_accepted_stops() {
    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    feed_all(&mut conn, OUT, &ssl_request(), 1, &mut out);
    feed_all(&mut conn, IN, b"N", 2, &mut out);
    feed_all(
        &mut conn,
        OUT,
        &startup(&[("database", "shop")]),
        3,
        &mut out,
    );
    feed_all(
        &mut conn,
        IN,
        &[msg(b'R', &[0; 4]), ready()].concat(),
        4,
        &mut out,
    );
    feed_all(&mut conn, OUT, &query("SELECT 1"), 5, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        6,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].namespace.as_deref(), Some("shop"));

    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    feed_all(&mut conn, OUT, &ssl_request(), 1, &mut out);
    feed_all(&mut conn, IN, b"S", 2, &mut out);
    // A TLS ClientHello and whatever follows: not parsed.
    feed_all(&mut conn, OUT, &[0x16, 3, 1, 0, 200, 1], 3, &mut out);
    feed_all(&mut conn, OUT, &query("SELECT 1"), 4, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        5,
        &mut out,
    );
    conn.close(6, &mut out);
    assert!(out.is_empty());
    assert_eq!(conn.counters().encrypted, 1);
    assert_eq!(conn.counters().desync, 0);
}

#[test]
fn unknown_prepared_statement_is_partial() {
    // Picked up mid-stream: the statement was prepared before capture started.
    let mut conn = Connection::new(OUT, false);
    let mut out = Vec::new();
    let batch = [
        bind("", "S_7", &[b"42"]),
        msg(b'D', b"P\0"),
        execute(""),
        sync(),
    ]
    .concat();
    feed_all(&mut conn, OUT, &batch, 1, &mut out);
    let reply = [
        msg(b'2', &[]),
        msg(b'n', &[]),
        complete("UPDATE 1"),
        ready(),
    ]
    .concat();
    feed_all(&mut conn, IN, &reply, 2, &mut out);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert!(x.partial && !x.no_response);
    assert_eq!(
        (&x.operation, &x.query_text, &x.namespace),
        (&None, &None, &None)
    );
    assert_eq!(conn.counters().unknown_statements, 1);
    assert_eq!(conn.counters().midstream_pickups, 1);

    // Its next Parse is seen: from then on the text is known.
    let batch = [
        parse("S_8", "DELETE FROM carts WHERE id = $1"),
        bind("", "S_8", &[b"1"]),
        execute(""),
        sync(),
    ]
    .concat();
    feed_all(&mut conn, OUT, &batch, 3, &mut out);
    let reply = [
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("DELETE 1"),
        ready(),
    ]
    .concat();
    feed_all(&mut conn, IN, &reply, 4, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].operation.as_deref(), Some("DELETE"));
    assert_eq!(out[1].collection.as_deref(), Some("carts"));
    // Still partial: the database name was in the startup message, never seen.
    assert!(out[1].partial);
}

#[test]
fn large_data_row_is_skipped_by_length() {
    let (mut conn, mut out) = started();
    feed_all(
        &mut conn,
        OUT,
        &query("SELECT repeat('x', 100000) AS big"),
        3,
        &mut out,
    );
    let big = vec![b'x'; 100_000];
    let reply = [row_description(), row(&[&big])].concat();
    // Read in 16 KiB pieces, 2 KiB of each captured; the tail arrives in its own read.
    let mut ts = 4;
    for piece in reply.chunks(16 * 1024) {
        let captured = &piece[..piece.len().min(2048)];
        conn.feed(IN, captured, piece.len() as u64, ts, &mut out);
        ts += 1;
    }
    assert!(conn.buffered_bytes() <= 2 * 1024);
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        ts,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert!(!x.no_response && x.error_code.is_none());
    assert_eq!(x.response_bytes, reply.len() as u64 + 14 + 6);
    assert_eq!(x.end_ns, ts);
    let c = conn.counters();
    assert_eq!(c.desync, 0);
    assert_eq!(c.truncated_messages, 1);
    assert!(c.uncaptured_bytes_skipped > 80_000);
}

#[test]
fn large_result_whose_end_was_not_captured() {
    // As captured through the proxy: 65536 + 34554 bytes, the CommandComplete and
    // ReadyForQuery in the uncaptured end of the second read.
    let (mut conn, mut out) = started();
    feed_all(
        &mut conn,
        OUT,
        &query("SELECT repeat('x', 100000) AS big"),
        3,
        &mut out,
    );
    let big = vec![b'x'; 100_000];
    let reply = [
        row_description(),
        row(&[&big]),
        complete("SELECT 1"),
        ready(),
    ]
    .concat();
    let (a, b) = reply.split_at(65536);
    conn.feed(IN, &a[..2048], a.len() as u64, 4, &mut out);
    conn.feed(IN, &b[..2048], b.len() as u64, 5, &mut out);
    assert_eq!(conn.counters().desync, 1);
    assert!(out.is_empty());
    // The frontend moves on: the reply is over.
    feed_all(&mut conn, OUT, &query("SELECT 2"), 6, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].no_response);
    assert_eq!(out[0].end_ns, 5);
    assert_eq!(conn.counters().replies_cut, 1);
    // The next reply starts a read: in sync again, and paired.
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        7,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].query_text.as_deref(), Some("SELECT ?"));
    assert!(!out[1].no_response);
    assert_eq!(conn.counters().resyncs, 1);
}

#[test]
fn backend_resyncs_at_the_tail_of_a_result() {
    let (mut conn, mut out) = started();
    let batch = [
        parse("", "SELECT * FROM events"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]
    .concat();
    feed_all(&mut conn, OUT, &batch, 3, &mut out);
    let rows: Vec<u8> = (0..1000)
        .flat_map(|i| row(&[format!("event number {i}").as_bytes()]))
        .collect();
    let reply = [
        msg(b'1', &[]),
        msg(b'2', &[]),
        row_description(),
        rows,
        complete("SELECT 1000"),
        ready(),
    ]
    .concat();
    // A first read of 4 KiB (2 KiB captured) loses the boundaries; the last read is short,
    // wholly captured, and starts inside a row.
    let cut = reply.len() - 300;
    conn.feed(IN, &reply[..2048], 4096, 4, &mut out);
    conn.feed(
        IN,
        &reply[4096..cut][..2048],
        (cut - 4096) as u64,
        5,
        &mut out,
    );
    assert!(out.is_empty());
    feed_all(&mut conn, IN, &reply[cut..], 6, &mut out);
    assert_eq!(out.len(), 1);
    assert!(!out[0].no_response);
    assert_eq!(out[0].collection.as_deref(), Some("events"));
    assert_eq!(out[0].end_ns, 6);
    assert_eq!((conn.counters().desync, conn.counters().resyncs), (1, 1));
    assert_eq!(conn.open_exchanges(), 0);
}

#[test]
fn lost_request_header_drops_pending_until_idle() {
    let (mut conn, mut out) = started();
    // One write: a long query (captured in part) and a short one whose header is lost.
    let long = format!("SELECT '{}'", "y".repeat(3000));
    let write = [query(&long), query("SELECT 2")].concat();
    conn.feed(OUT, &write[..2048], write.len() as u64, 3, &mut out);
    assert_eq!(conn.counters().desync, 1);
    assert_eq!(out.len(), 1);
    assert!(out[0].no_response);
    assert_eq!(out[0].query_text.as_deref(), Some("SELECT ?"));
    // Replies to both; the first ReadyForQuery makes the backend idle again for pairing.
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        4,
        &mut out,
    );
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        5,
        &mut out,
    );
    feed_all(&mut conn, OUT, &query("SELECT 3"), 6, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[error("22012"), ready()].concat(),
        7,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].error_code.as_deref(), Some("22012"));
    assert_eq!((out[1].start_ns, out[1].end_ns), (6, 7));
    assert!(!out[1].no_response);
}

#[test]
fn error_in_parse_fails_the_next_execute() {
    let (mut conn, mut out) = started();
    let batch = [parse("", "SELEC 1"), bind("", "", &[]), execute(""), sync()].concat();
    feed_all(&mut conn, OUT, &batch, 3, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[error("42601"), ready()].concat(),
        4,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error_code.as_deref(), Some("42601"));
    assert_eq!(out[0].operation, None);
    // A prepare with no execute failing: no exchange.
    let batch = [parse("s1", "SELEC 1"), sync()].concat();
    feed_all(&mut conn, OUT, &batch, 5, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[error("42601"), ready()].concat(),
        6,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(conn.open_exchanges(), 0);
}

#[test]
fn close_ends_what_is_open() {
    let (mut conn, mut out) = started();
    feed_all(&mut conn, OUT, &query("SELECT pg_sleep(10)"), 3, &mut out);
    conn.close(9, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].no_response);
    assert_eq!(out[0].end_ns, 9);
    assert_eq!(conn.open_exchanges(), 0);
}

#[test]
fn statement_cache_is_bounded() {
    let limits = Limits {
        max_statements: 8,
        ..Limits::default()
    };
    let mut conn = Connection::with_limits(OUT, true, limits);
    let mut out = Vec::new();
    for i in 0..100 {
        feed_all(
            &mut conn,
            OUT,
            &[parse(&format!("s{i}"), "SELECT 1"), sync()].concat(),
            i,
            &mut out,
        );
        assert!(conn.cached_statements() <= 8);
    }
    assert_eq!(conn.counters().statements_evicted, 92);
    // s0 was evicted, s99 was not.
    let batch = [
        bind("", "s0", &[]),
        execute(""),
        bind("", "s99", &[]),
        execute(""),
        sync(),
    ]
    .concat();
    feed_all(&mut conn, OUT, &batch, 200, &mut out);
    let mut reply = vec![];
    for _ in 0..100 {
        reply.extend(ready());
    }
    feed_all(&mut conn, IN, &reply, 201, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), complete("SELECT 1"), ready()].concat(),
        202,
        &mut out,
    );
    assert_eq!(ops(&out), [None, Some("SELECT")]);
}

#[test]
fn pending_queue_is_bounded() {
    let limits = Limits {
        max_pending: 4,
        ..Limits::default()
    };
    let mut conn = Connection::with_limits(OUT, true, limits);
    let mut out = Vec::new();
    let mut batch = parse("", "SELECT 1");
    for _ in 0..10 {
        batch.extend([bind("", "", &[]), execute("")].concat());
    }
    batch.extend(sync());
    feed_all(&mut conn, OUT, &batch, 1, &mut out);
    assert!(conn.open_exchanges() <= 4);
    assert!(conn.counters().untracked > 0);
    let mut reply = vec![];
    for _ in 0..10 {
        reply.extend(complete("SELECT 1"));
    }
    reply.extend(ready());
    feed_all(&mut conn, IN, &reply, 2, &mut out);
    // Pairing resumes after the backend was idle.
    feed_all(&mut conn, OUT, &query("SELECT 2"), 3, &mut out);
    feed_all(
        &mut conn,
        IN,
        &[complete("SELECT 1"), ready()].concat(),
        4,
        &mut out,
    );
    let last = out.last().unwrap();
    assert_eq!(
        (last.start_ns, last.end_ns, last.no_response),
        (3, 4, false)
    );
}

#[test]
fn detects_either_end() {
    let s = startup(&[("user", "u"), ("database", "d")]);
    assert_eq!(Connection::detect(OUT, &s), Some(OUT));
    assert_eq!(Connection::detect(IN, &ssl_request()), Some(IN));
    let gss = [8u32.to_be_bytes(), GSSENC_REQUEST.to_be_bytes()].concat();
    assert_eq!(Connection::detect(OUT, &gss), Some(OUT));
    // Older connections: typed frontend messages.
    assert_eq!(Connection::detect(OUT, &query("SELECT 1")), Some(OUT));
    let batch = [bind("", "S_1", &[b"1"]), execute(""), sync()].concat();
    assert_eq!(Connection::detect(OUT, &batch), Some(OUT));
    assert_eq!(Connection::detect(OUT, &sync()), Some(OUT));
    // The server's first bytes: the other flow is the request flow.
    let auth_ok = [msg(b'R', &[0; 4]), msg(b'S', &cstrs(&[b"a", b"b"]))].concat();
    assert_eq!(Connection::detect(IN, &auth_ok), Some(OUT));
    let sasl = msg(
        b'R',
        &[&10u32.to_be_bytes()[..], &cstrs(&[b"SCRAM-SHA-256", b""])].concat(),
    );
    assert_eq!(Connection::detect(OUT, &sasl), Some(IN));
    let reply = [complete("SELECT 1"), ready()].concat();
    assert_eq!(Connection::detect(IN, &reply), Some(OUT));
    // Not PostgreSQL.
    for other in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3],
        b"N",
        b"",
        &query("SELECT 1")[..4],
    ] {
        assert_eq!(Connection::detect(OUT, other), None, "{other:?}");
    }
}

#[test]
fn fixtures_are_detected() {
    for (fixture, first_is_client) in [(PSQL, true), (PGBENCH_EXTENDED, true)] {
        let (client, first) = chunks(fixture).swap_remove(0);
        assert_eq!(client, first_is_client);
        assert_eq!(Connection::detect(OUT, &first), Some(OUT));
    }
    // From the third chunk on (an older connection): the startup packet, then typed messages.
    let c = chunks(PGBENCH_PREPARED);
    assert_eq!(Connection::detect(IN, &c[3].1), Some(OUT));
    assert_eq!(Connection::detect(OUT, &c[4].1), Some(OUT));
}

#[test]
fn garbage_does_not_panic() {
    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    for (i, junk) in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        b"Q\x00\x00\x00\x00",
        b"Z\x7f\xff\xff\xff",
    ]
    .iter()
    .enumerate()
    {
        conn.feed(OUT, junk, junk.len() as u64, i as u64, &mut out);
        conn.feed(IN, junk, u64::MAX, i as u64, &mut out);
    }
    conn.close(99, &mut out);
    assert!(out.is_empty());
}

// === Properties ===

fn split_points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any split of every read and write into smaller chunks pairs the same way.
    #[test]
    fn split_anyhow_pairs_the_same(
        which in 0usize..5,
        cuts in prop::collection::vec(0usize..4096, 0..40),
    ) {
        let fixture = [PIPELINE_EXTENDED, PIPELINE_PREPARED_ERROR, PGBENCH_EXTENDED, PGBENCH_PREPARED, PSQL][which];
        let (want, _) = replay(fixture, OUT);
        let mut conn = Connection::new(OUT, true);
        let mut out = Vec::new();
        let mut ts = 0;
        for (n, (client, bytes)) in chunks(fixture).into_iter().enumerate() {
            let flow = if client { OUT } else { IN };
            let points = split_points(bytes.len(), &cuts[..cuts.len().min(n % 7 * 3)]);
            for w in points.windows(2) {
                let piece = &bytes[w[0]..w[1]];
                conn.feed(flow, piece, piece.len() as u64, n as u64 + 1, &mut out);
            }
            ts = n as u64 + 1;
        }
        conn.close(10_000, &mut out);
        let _ = ts;
        prop_assert_eq!(out, want);
        prop_assert_eq!(conn.counters().desync, 0);
    }

    /// Arbitrary chunks on both flows, captured in part: never a panic, bounds hold.
    #[test]
    fn arbitrary_chunks(
        fresh in any::<bool>(),
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64), 0u64..5000),
            0..40,
        ),
    ) {
        let limits = Limits { max_statements: 4, max_statement_bytes: 256, max_portals: 2, max_pending: 8, max_buffer: 128 };
        let mut conn = Connection::with_limits(OUT, fresh, limits);
        let mut out = Vec::new();
        for (i, (client, bytes, extra)) in chunks.iter().enumerate() {
            let flow = if *client { OUT } else { IN };
            conn.feed(flow, bytes, bytes.len() as u64 + extra, i as u64, &mut out);
            prop_assert!(conn.open_exchanges() <= 8);
            prop_assert!(conn.cached_statements() <= 4);
            prop_assert!(conn.buffered_bytes() <= 2 * 10_000);
        }
        conn.close(1000, &mut out);
        prop_assert_eq!(conn.open_exchanges(), 0);
        for x in &out {
            prop_assert!(x.start_ns <= x.end_ns);
            prop_assert!(x.query_text.as_ref().is_none_or(|t| t.len() <= sql::MAX_SANITIZED_LEN + 3));
        }
    }

    /// A pipelined batch built from messages, with valid messages mixed in any order into
    /// writes of any size: every execute gets its own reply.
    #[test]
    fn pipelined_batches_pair(n in 1usize..20, fail in prop::option::of(0usize..20), cuts in prop::collection::vec(0usize..2000, 0..10)) {
        let (mut conn, mut out) = started();
        let mut batch = Vec::new();
        let mut reply = Vec::new();
        for i in 0..n {
            batch.extend(parse(&format!("s{i}"), &format!("SELECT {i} FROM t{i}")));
            batch.extend(bind("", &format!("s{i}"), &[b"1"]));
            batch.extend(execute(""));
            // The server answers nothing after an error until the Sync.
            if fail.is_some_and(|f| f < i) {
                continue;
            }
            reply.extend([msg(b'1', &[]), msg(b'2', &[])].concat());
            if fail == Some(i) {
                reply.extend(error("22012"));
            } else {
                reply.extend([row(&[b"1"]), complete("SELECT 1")].concat());
            }
        }
        batch.extend(sync());
        reply.extend(ready());
        for (flow, bytes) in [(OUT, &batch), (IN, &reply)] {
            for w in split_points(bytes.len(), &cuts).windows(2) {
                feed_all(&mut conn, flow, &bytes[w[0]..w[1]], 3, &mut out);
            }
        }
        let ran = fail.map_or(n, |f| (f + 1).min(n));
        prop_assert_eq!(out.len(), ran);
        for (i, x) in out.iter().enumerate() {
            let tbl = format!("t{i}");
            prop_assert_eq!(x.collection.as_deref(), Some(tbl.as_str()));
            prop_assert_eq!(x.error_code.is_some(), fail == Some(i));
        }
        prop_assert_eq!(conn.counters().not_executed as usize, n - ran);
        prop_assert_eq!(conn.open_exchanges(), 0);
    }
}
