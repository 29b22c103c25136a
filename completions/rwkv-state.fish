# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_rwkv_state_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_rwkv_state_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_rwkv_state_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_rwkv_state_using_subcommand
    set -l cmd (__fish_rwkv_state_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -s v -l verbose -d 'Load time and speed on stderr'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -s q -l quiet -d 'No hints on stderr (only errors)'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -s h -l help -d 'Print help'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -s V -l version -d 'Print version'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -f -a "feed" -d 'Feed text (stdin, -p or -f) or token ids to a model and write the state'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -f -a "info" -d 'Show a state file (shape, model fingerprint, tokens fed, per-layer norms) or a model file'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -f -a "import" -d 'Convert a state-tuning file (RWKV-PEFT .pth, Ai00 .st) into a state file'
complete -c rwkv-state -n "__fish_rwkv_state_needs_command" -f -a "diff" -d 'Per-tensor max and mean absolute difference of two state files'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s p -l prompt -d 'Text to feed (instead of stdin)' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s f -l prompt-file -d 'Feed this file\'s contents (instead of stdin; `-` is stdin); at most 64 MiB' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s o -l output -d 'Output file; `-` is stdout, the default when stdout is not a terminal' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l state -d 'Start from this state (`-` reads it from stdin; then the text comes from -p or -f)' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s m -l model -d 'Model file, RWKV-4, 5.2, 6, 7 or 7a: .pth, .safetensors or Ai00 .st (BlinkDL names; RWKV-6 also Hugging Face or Ai00 names)' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l tokenizer -d 'Tokenizer: `world`, `bytes` or a tokenizer.json file [default: world for a 65536 vocab, bytes for 256]' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l quant -d 'Quantize the large matrices at load (the head too; embedding, LoRA and vectors stay as stored)' -r -f -a "int8\t'8-bit integers, blocks of 64 with an f32 scale (1.0625 bytes per weight)'
nf4\t'4-bit normal float, blocks of 64 with a bf16 scale (0.53125 bytes per weight)'"
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l quant-layers -d 'Quantize only the first N layers' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l adapter -d 'Merge a RWKV-PEFT adapter into the weights at load (before --quant): W + SCALE B A for each `NAME.lora_A`, `NAME.lora_B` in FILE (LoRA: SCALE is lora_alpha / lora_r), DiSHA\'s update for each `NAME.disha`; other tensors in FILE replace the model\'s. Repeatable: PiSSA is its init file, then its checkpoint [default SCALE: 1]' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l save-quantized -d 'Write the model quantized to PATH (once), then run from it; later runs load PATH directly, without --quant' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l precision -d 'Activations of the products: bf16 multiplies twice as fast on CPUs with AVX-512 BF16 (f32 elsewhere and on OpenCL) and makes a prompt\'s numbers depend on how text is split into chunks; generation rounds them only against bf16 weights, and a stream\'s output never depends on --batch. f32 gives exact products [default: bf16 for rwkv-gen; f32 for rwkv-score and rwkv-state, whose numbers and states are kept]' -r -f -a "bf16\t'Activations rounded to bf16, `vdpbf16ps` products'
f32\t'f32 activations'"
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l device -d 'Where to run: cpu, opencl[:PLATFORM[:DEVICE]] (see rwkv-gen --list-devices), or auto (a GPU when one is found, else the CPU)' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l threads -d 'Worker threads [default: all cores]' -r
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l ids -d 'The input is token ids (separated by spaces, commas or newlines), not text'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -l force -d 'Use --state even when it was made with other weights of the same shape'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s v -l verbose -d 'Load time and speed on stderr'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s q -l quiet -d 'No hints on stderr (only errors)'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand feed" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand info" -l json -d 'One JSON object instead of text'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand info" -s v -l verbose -d 'Load time and speed on stderr'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand info" -s q -l quiet -d 'No hints on stderr (only errors)'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand info" -s h -l help -d 'Print help'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand import" -s m -l model -d 'The model the state is for: checked against it, its fingerprint recorded (needed for a RWKV-PEFT file, whose tensors look alike for RWKV-6 and RWKV-7)' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand import" -s o -l output -d 'Output file; `-` is stdout' -r -F
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand import" -s v -l verbose -d 'Load time and speed on stderr'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand import" -s q -l quiet -d 'No hints on stderr (only errors)'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand import" -s h -l help -d 'Print help'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand diff" -l json -d 'JSON lines instead of a table'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand diff" -s v -l verbose -d 'Load time and speed on stderr'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand diff" -s q -l quiet -d 'No hints on stderr (only errors)'
complete -c rwkv-state -n "__fish_rwkv_state_using_subcommand diff" -s h -l help -d 'Print help'
