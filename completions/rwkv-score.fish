complete -c rwkv-score -l top-logprobs -d 'With --per-token: the K most likely alternatives at each position' -r
complete -c rwkv-score -l color -d 'Colours for --view [auto: when stdout is a terminal and NO_COLOR is unset]; without colour the text is the same, unshaded' -r -f -a "auto\t''
always\t''
never\t''"
complete -c rwkv-score -l state -d 'Start every document from this state file or state-tuning file' -r -F
complete -c rwkv-score -l chunk -d 'Tokens per sequence call [default: about 64 MiB of logits, at most 512]' -r
complete -c rwkv-score -l max-line-bytes -d 'The longest input line read with --lines and --jsonl; a longer one is an error' -r
complete -c rwkv-score -l first-line -d 'With --lines and --jsonl: the number of the first line (each record\'s source), for a part of a longer file' -r
complete -c rwkv-score -s m -l model -d 'Model file, RWKV-4, 5.2, 6, 7 or 7a: .pth, .safetensors or Ai00 .st (BlinkDL names; RWKV-6 also Hugging Face or Ai00 names)' -r -F
complete -c rwkv-score -l tokenizer -d 'Tokenizer: `world`, `bytes` or a tokenizer.json file [default: world for a 65536 vocab, bytes for 256]' -r
complete -c rwkv-score -l quant -d 'Quantize the large matrices at load (the head too; embedding, LoRA and vectors stay as stored)' -r -f -a "int8\t'8-bit integers, blocks of 64 with an f32 scale (1.0625 bytes per weight)'
nf4\t'4-bit normal float, blocks of 64 with a bf16 scale (0.53125 bytes per weight)'"
complete -c rwkv-score -l quant-layers -d 'Quantize only the first N layers' -r
complete -c rwkv-score -l adapter -d 'Merge a RWKV-PEFT adapter into the weights at load (before --quant): W + SCALE B A for each `NAME.lora_A`, `NAME.lora_B` in FILE (LoRA: SCALE is lora_alpha / lora_r), DiSHA\'s update for each `NAME.disha`; other tensors in FILE replace the model\'s. Repeatable: PiSSA is its init file, then its checkpoint [default SCALE: 1]' -r
complete -c rwkv-score -l save-quantized -d 'Write the model quantized to PATH (once), then run from it; later runs load PATH directly, without --quant' -r -F
complete -c rwkv-score -l precision -d 'Activations of the products: bf16 multiplies twice as fast on CPUs with AVX-512 BF16 (f32 elsewhere and on OpenCL) and makes a prompt\'s numbers depend on how text is split into chunks; generation rounds them only against bf16 weights, and a stream\'s output never depends on --batch. f32 gives exact products [default: bf16 for rwkv-gen; f32 for rwkv-score and rwkv-state, whose numbers and states are kept]' -r -f -a "bf16\t'Activations rounded to bf16, `vdpbf16ps` products'
f32\t'f32 activations'"
complete -c rwkv-score -l device -d 'Where to run: cpu, opencl[:PLATFORM[:DEVICE]] (see rwkv-gen --list-devices), or auto (a GPU when one is found, else the CPU)' -r
complete -c rwkv-score -l threads -d 'Worker threads [default: all cores]' -r
complete -c rwkv-score -l lines -d 'Every input line is a document'
complete -c rwkv-score -l jsonl -d 'Every input line is a JSON object with `text`, `ids`, `context` + `continuation` or `context` + `choices`'
complete -c rwkv-score -l summary -d 'Add a final object with the totals over all documents'
complete -c rwkv-score -l per-token -d 'Add every token with its text, bytes and log-probability'
complete -c rwkv-score -l view -d 'Show the text for a person, each character shaded by its surprisal'
complete -c rwkv-score -l no-bos -d 'Do not feed token 0 first: the first token is context only'
complete -c rwkv-score -l force -d 'Use --state even when it was made with other weights of the same shape'
complete -c rwkv-score -l tokenize -d 'Print each document\'s token ids and counts (the model\'s tokenizer when -m is given, else --tokenizer, else World); with --jsonl, every text field\'s'
complete -c rwkv-score -l merge -d 'No model: read rwkv-score output (stdin or files) and print the totals, as one run over all of it would'
complete -c rwkv-score -s v -l verbose -d 'Load time and scoring speed on stderr'
complete -c rwkv-score -s q -l quiet -d 'No progress bar and no hints (the bar shows only when stderr is a terminal)'
complete -c rwkv-score -s h -l help -d 'Print help (see more with \'--help\')'
complete -c rwkv-score -s V -l version -d 'Print version'
