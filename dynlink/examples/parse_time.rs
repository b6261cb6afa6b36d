//! Times parsing and linking a library: `cargo run --release --example parse_time LIB.so`.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: parse_time LIB.so");
        return;
    };
    let bytes = std::fs::read(path).expect("read the library");
    let n = 200;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(pvm_dynlink::Library::parse(&bytes).expect("parse"));
        }
        let p = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(goblin::elf::Elf::parse(&bytes).expect("goblin"));
        }
        let g = t.elapsed() / n;
        let lib = pvm_dynlink::Library::parse(&bytes).expect("parse");
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(lib.link(0x10_4000_0000, |_| Some(1)).expect("link"));
        }
        let l = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(lib.shared_image());
        }
        let s = t.elapsed() / n;
        println!("parse {p:?} (goblin alone {g:?}), link {l:?}, shared image {s:?}");
    }
}
