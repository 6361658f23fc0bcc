//! # firebrand-derive
//!
//! `#[derive(Module)]` for Firebrand: from a struct's fields it writes the
//! parts of `firebrand_nn::Module` that only list what the struct holds —
//! the parameter and buffer visitors, train/eval propagation, the child list
//! `summary()` walks, and `describe()`. The user writes the forward pass as
//! an inherent method; the derive's `Module::forward` calls it.
//!
//! Use it through `firebrand::nn::Module` (or `firebrand_nn::Module`), which
//! re-exports this macro beside the trait. The macro's documentation, with
//! the field rules and attributes, is on that re-export.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path, parse_macro_input, spanned::Spanned};

/// `#[derive(Module)]`: implements `Module` for a struct from its fields, so
/// a custom model needs only its forward pass (PyTorch's `nn.Module`
/// subclass, without `register_buffer` or hand-written visitors).
///
/// * **Fields.** Every field is visited in declaration order under its name,
///   as PyTorch names `state_dict` entries: a layer or other module
///   (`conv.weight`), a `Tensor` parameter (`scale`), `Vec<_>` (`blocks.0.…`)
///   and `Option<_>` of them. Numbers, `bool` and `String` fields are
///   settings and hold nothing; any other type needs `#[module(skip)]`.
///   Tuple structs name fields by position (`0.weight`).
/// * **Field attributes.** `#[module(skip)]` leaves a field out;
///   `#[module(buffer)]` makes a tensor a buffer (saved, not trained);
///   `#[module(rename = "LayerNorm")]` visits it under another name (e.g. a
///   checkpoint's, as Hugging Face's BERT names its norms `LayerNorm`).
/// * **Generated:** `visit_parameters`, `visit_buffers`, `set_training`
///   (`train()`/`eval()` reach every layer, BatchNorm and Dropout included),
///   `visit_children` (for `summary()` and `named_modules()`), `describe`,
///   and `Module::forward`, which calls the struct's inherent
///   `fn forward(&self, x: &Tensor) -> Tensor`.
/// * **Struct attributes.** `#[module(forward = name)]` calls another inherent
///   method instead; `#[module(describe = "text")]` or
///   `#[module(describe = method)]` sets `describe()` (default: the struct's
///   name); `#[module(crate = path)]` names the `firebrand_nn` crate when it
///   is re-exported under another path (found by itself for dependencies on
///   `firebrand-nn` or `firebrand`).
///
/// ```ignore
/// use firebrand::prelude::*;
///
/// #[derive(Module)]
/// struct ConvBlock {
///     conv: Conv2d,
///     bn: BatchNorm2d,     // running statistics are buffers: saved and loaded
///     #[module(skip)]
///     name: std::path::PathBuf,
/// }
///
/// impl ConvBlock {
///     fn forward(&self, x: &Tensor) -> Tensor {
///         self.bn.forward(&self.conv.forward(x)).relu()
///     }
/// }
/// ```
///
/// The runnable version is on `firebrand_nn::Module`. Forgetting the
/// inherent `forward` is a panic on the first call naming the struct and
/// the method; a field of an unknown type is a compile error that suggests
/// `#[module(skip)]`.
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What a field contributes.
enum Role {
    /// Parameters, buffers and children, as its `ModuleField` impl says.
    Default,
    /// Every tensor it holds is a buffer (saved, not trained).
    Buffer,
    /// Left out.
    Skip,
}

struct StructAttrs {
    forward: Ident,
    krate: Option<Path>,
    describe: Option<Describe>,
}

/// `describe = "text"` or `describe = method` (`fn(&self) -> String`).
enum Describe {
    Text(LitStr),
    Method(Ident),
}

fn struct_attrs(input: &DeriveInput) -> syn::Result<StructAttrs> {
    let mut out = StructAttrs { forward: format_ident!("forward"), krate: None, describe: None };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("forward") {
                out.forward = meta.value()?.parse()?;
            } else if meta.path.is_ident("crate") {
                out.krate = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("describe") {
                let value = meta.value()?;
                out.describe = Some(if value.peek(LitStr) {
                    Describe::Text(value.parse()?)
                } else {
                    Describe::Method(value.parse()?)
                });
            } else {
                return Err(meta.error(
                    "derive(Module): unknown struct attribute; expected `forward = method`, `crate = path`, `describe = \"...\"` or `describe = method`",
                ));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// A field's role and, with `rename = "name"`, its name in the state dict.
fn field_role(field: &syn::Field) -> syn::Result<(Role, Option<String>)> {
    let (mut role, mut rename) = (Role::Default, None);
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                role = Role::Skip;
            } else if meta.path.is_ident("buffer") {
                role = Role::Buffer;
            } else if meta.path.is_ident("rename") {
                rename = Some(meta.value()?.parse::<LitStr>()?.value());
            } else {
                return Err(meta.error(
                    "derive(Module): unknown field attribute; expected `skip`, `buffer` or `rename = \"name\"`",
                ));
            }
            Ok(())
        })?;
    }
    Ok((role, rename))
}

/// The path of `firebrand_nn` as the deriving crate sees it: the crate
/// itself, a direct dependency, or the `firebrand` facade's `nn` module.
fn nn_path(explicit: Option<Path>) -> TokenStream2 {
    use proc_macro_crate::{FoundCrate, crate_name};
    if let Some(p) = explicit {
        return quote!(#p);
    }
    match crate_name("firebrand-nn") {
        Ok(FoundCrate::Itself) => quote!(::firebrand_nn),
        Ok(FoundCrate::Name(n)) => {
            let id = format_ident!("{}", n);
            quote!(::#id)
        }
        Err(_) => match crate_name("firebrand") {
            Ok(FoundCrate::Name(n)) => {
                let id = format_ident!("{}", n);
                quote!(::#id::nn)
            }
            _ => quote!(::firebrand::nn),
        },
    }
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let attrs = struct_attrs(&input)?;
    let nn = nn_path(attrs.krate.clone());
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        _ => {
            return Err(syn::Error::new(
                input.span(),
                "derive(Module) needs a struct; for an enum, implement firebrand_nn::Module by hand",
            ));
        }
    };
    // (accessor, name in the state dict, role)
    let members: Vec<(TokenStream2, String, Role)> = match fields {
        Fields::Named(f) => f
            .named
            .iter()
            .map(|field| {
                let id = field.ident.as_ref().expect("named");
                let key = id.to_string();
                let (role, rename) = field_role(field)?;
                let key = rename.unwrap_or_else(|| key.strip_prefix("r#").unwrap_or(&key).to_string());
                Ok((quote!(#id), key, role))
            })
            .collect::<syn::Result<_>>()?,
        Fields::Unnamed(f) => f
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let idx = syn::Index::from(i);
                let (role, rename) = field_role(field)?;
                Ok((quote!(#idx), rename.unwrap_or_else(|| i.to_string()), role))
            })
            .collect::<syn::Result<_>>()?,
        Fields::Unit => Vec::new(),
    };
    let field_trait = quote!(#nn::ModuleField);
    let tensor = quote!(#nn::__private::Tensor);
    let mut params = Vec::new();
    let mut buffers = Vec::new();
    let mut training = Vec::new();
    let mut children = Vec::new();
    for (acc, key, role) in &members {
        let path = quote!(&::std::format!("{}{}", prefix, #key));
        match role {
            Role::Skip => {}
            Role::Buffer => {
                buffers.push(quote!(#field_trait::visit_parameters(&self.#acc, #path, f);));
                buffers.push(quote!(#field_trait::visit_buffers(&self.#acc, #path, f);));
            }
            Role::Default => {
                params.push(quote!(#field_trait::visit_parameters(&self.#acc, #path, f);));
                buffers.push(quote!(#field_trait::visit_buffers(&self.#acc, #path, f);));
                training.push(quote!(#field_trait::set_training(&mut self.#acc, training);));
                children.push(quote!(#field_trait::visit_children(&self.#acc, #path, f);));
            }
        }
    }
    let describe = match &attrs.describe {
        Some(Describe::Text(lit)) => quote!(::std::string::String::from(#lit)),
        Some(Describe::Method(m)) => quote!(Self::#m(self)),
        None => {
            let s = name.to_string();
            quote!(::std::string::String::from(#s))
        }
    };
    let forward = &attrs.forward;
    let forward_name = forward.to_string();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #nn::Module for #name #ty_generics #where_clause {
            fn forward(&self, x: &#tensor) -> #tensor {
                // `Self::#forward` finds the struct's inherent method first.
                // Without one it names this very function; the guard turns
                // that endless recursion into a panic that says so.
                let _guard = #nn::__private::ForwardGuard::enter(self, #forward_name);
                let y = Self::#forward(self, x);
                #nn::__private::record_output(self, &y);
                y
            }

            #[allow(unused_variables)]
            fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &#tensor)) {
                #(#params)*
            }

            #[allow(unused_variables)]
            fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &#tensor)) {
                #(#buffers)*
            }

            #[allow(unused_variables)]
            fn set_training(&mut self, training: bool) {
                #(#training)*
            }

            #[allow(unused_variables)]
            fn visit_children<'__a>(&'__a self, prefix: &str, f: &mut dyn FnMut(&str, &'__a dyn #nn::Module)) {
                #(#children)*
            }

            fn describe(&self) -> ::std::string::String {
                #describe
            }
        }
    })
}
