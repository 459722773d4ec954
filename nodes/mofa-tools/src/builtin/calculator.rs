//! `calculator`: evaluates an arithmetic expression. Numbers, + - * / % ^, parentheses, unary
//! minus, the constants pi and e, and sqrt abs ln log10 exp sin cos tan floor ceil round min max.

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::{Value, json};

pub struct Calculator;

#[async_trait]
impl Tool for Calculator {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calculator".into(),
            description: "Evaluates an arithmetic expression such as `(17 * 23) / 2 + sqrt(16)`."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 1000}},
                "required": ["expression"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let expr = super::str_arg(&args, "expression")?;
        let value = evaluate(expr).map_err(ToolError::Failed)?;
        Ok(json!({"expression": expr, "value": value}))
    }
}

/// Evaluates `src`; errors say where and why.
pub fn evaluate(src: &str) -> Result<f64, String> {
    let mut p = Parser {
        s: src.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.sum()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(format!("unexpected `{}` at {}", p.s[p.i] as char, p.i));
    }
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("the result is not a finite number ({v})"))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        loop {
            if self.eat(b'+') {
                v += self.product()?;
            } else if self.eat(b'-') {
                v -= self.product()?;
            } else {
                return Ok(v);
            }
        }
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        loop {
            if self.eat(b'*') {
                v *= self.unary()?;
            } else if self.eat(b'/') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("division by zero".into());
                }
                v /= d;
            } else if self.eat(b'%') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("modulo by zero".into());
                }
                v %= d;
            } else {
                return Ok(v);
            }
        }
    }

    /// Signs bind looser than `^`: -2^2 = -4.
    fn unary(&mut self) -> Result<f64, String> {
        if self.eat(b'-') {
            return Ok(-self.unary()?);
        }
        if self.eat(b'+') {
            return self.unary();
        }
        self.power()
    }

    /// Right-associative: 2^3^2 = 2^9.
    fn power(&mut self) -> Result<f64, String> {
        let base = self.atom()?;
        if self.eat(b'^') {
            let exp = self.unary()?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > 200 {
            return Err("expression nested too deeply".into());
        }
        let v = self.atom_inner();
        self.depth -= 1;
        v
    }

    fn atom_inner(&mut self) -> Result<f64, String> {
        self.ws();
        if self.eat(b'(') {
            let v = self.sum()?;
            if !self.eat(b')') {
                return Err(format!("missing `)` at {}", self.i));
            }
            return Ok(v);
        }
        let start = self.i;
        match self.s.get(self.i) {
            Some(c) if c.is_ascii_digit() || *c == b'.' => {
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.')
                {
                    self.i += 1;
                }
                // An exponent: 1e3, 2.5E-4.
                if self.i < self.s.len() && (self.s[self.i] | 0x20) == b'e' {
                    let save = self.i;
                    self.i += 1;
                    if self.i < self.s.len() && (self.s[self.i] == b'-' || self.s[self.i] == b'+') {
                        self.i += 1;
                    }
                    let digits = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    if digits == self.i {
                        self.i = save;
                    }
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
                text.parse()
                    .map_err(|_| format!("bad number `{text}` at {start}"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.i])
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                match name.as_str() {
                    "pi" => return Ok(std::f64::consts::PI),
                    "e" => return Ok(std::f64::consts::E),
                    _ => {}
                }
                if !self.eat(b'(') {
                    return Err(format!("unknown name `{name}` at {start}"));
                }
                let mut args = vec![self.sum()?];
                while self.eat(b',') {
                    args.push(self.sum()?);
                }
                if !self.eat(b')') {
                    return Err(format!("missing `)` after the arguments of {name}"));
                }
                call(&name, &args)
            }
            Some(c) => Err(format!("unexpected `{}` at {}", *c as char, self.i)),
            None => Err("unexpected end of the expression".into()),
        }
    }
}

fn call(name: &str, args: &[f64]) -> Result<f64, String> {
    let one = |f: fn(f64) -> f64| match args {
        [x] => Ok(f(*x)),
        _ => Err(format!("{name} takes one argument, got {}", args.len())),
    };
    match name {
        "sqrt" => match args {
            [x] if *x < 0.0 => Err("sqrt of a negative number".into()),
            _ => one(f64::sqrt),
        },
        "abs" => one(f64::abs),
        "ln" => one(f64::ln),
        "log10" => one(f64::log10),
        "exp" => one(f64::exp),
        "sin" => one(f64::sin),
        "cos" => one(f64::cos),
        "tan" => one(f64::tan),
        "floor" => one(f64::floor),
        "ceil" => one(f64::ceil),
        "round" => one(f64::round),
        "min" | "max" if !args.is_empty() => Ok(args
            .iter()
            .copied()
            .reduce(if name == "min" { f64::min } else { f64::max })
            .unwrap_or_default()),
        _ => Err(format!("unknown function `{name}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn arithmetic_with_precedence_functions_and_constants() {
        assert_eq!(evaluate("17 * 23").unwrap(), 391.0);
        assert_eq!(evaluate("1 + 2 * 3 - 4 / 2").unwrap(), 5.0);
        assert_eq!(evaluate("-(2 + 3) ^ 2").unwrap(), -25.0);
        assert_eq!(evaluate("2 ^ 3 ^ 2").unwrap(), 512.0);
        assert_eq!(evaluate("sqrt(16) + max(1, 7, 3) + 10 % 4").unwrap(), 13.0);
        assert_eq!(evaluate("1.5e3 + .5").unwrap(), 1500.5);
        assert!((evaluate("cos(pi)").unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(evaluate("1 / 0").unwrap_err(), "division by zero");
        assert_eq!(
            evaluate("2 +").unwrap_err(),
            "unexpected end of the expression"
        );
        assert_eq!(evaluate("(1 + 2").unwrap_err(), "missing `)` at 6");
        assert_eq!(evaluate("foo(1)").unwrap_err(), "unknown function `foo`");
        assert_eq!(evaluate("1 $ 2").unwrap_err(), "unexpected `$` at 2");
        assert!(
            evaluate(&"(".repeat(500))
                .unwrap_err()
                .contains("nested too deeply")
        );
    }
}
